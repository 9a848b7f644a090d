// What Talos's config loader knows, so cosid refuses what Talos would refuse without modelling all of it.
//
// Talos decodes each document strictly (unknown keys anywhere are an error) and refuses document kinds it has not
// registered. cosid models only machine.type, machine.pods, cluster.{apiServer,controllerManager,scheduler}.image
// and KubeStaticPodConfig documents; the sets below are the names the Talos v1alpha1 types declare (read from
// siderolabs/talos pkg/machinery/config/types, tags v1.5 to v1.14: fields are only ever added, so the newest set takes
// every older config), one level deep. Deeper inside the parts cosid does not model every key is taken as is: a
// list of Talos's hundreds of nested fields would go stale with each release and refuse configs Talos accepts.

/** The v1alpha1 document's top-level keys. */
export const V1ALPHA1_KEYS: readonly string[] = ['version', 'debug', 'persist', 'machine', 'cluster'];

/** machine.* in the v1alpha1 document. */
export const MACHINE_KEYS: readonly string[] = [
  'type', 'token', 'ca', 'acceptedCAs', 'certSANs', 'controlPlane', 'kubelet', 'pods', 'network', 'disks', 'install',
  'files', 'env', 'time', 'sysctls', 'sysfs', 'registries', 'systemDiskEncryption', 'features', 'udev', 'logging',
  'kernel', 'seccompProfiles', 'nodeLabels', 'nodeAnnotations', 'nodeTaints', 'baseRuntimeSpecOverrides',
];

/** cluster.* in the v1alpha1 document. */
export const CLUSTER_KEYS: readonly string[] = [
  'id', 'secret', 'controlPlane', 'clusterName', 'network', 'token', 'aescbcEncryptionSecret', 'secretboxEncryptionSecret',
  'ca', 'acceptedCAs', 'aggregatorCA', 'serviceAccount', 'apiServer', 'controllerManager', 'proxy', 'scheduler',
  'discovery', 'etcd', 'coreDNS', 'externalCloudProvider', 'extraManifests', 'extraManifestHeaders', 'inlineManifests',
  'adminKubeconfig', 'allowSchedulingOnControlPlanes', 'allowSchedulingOnMasters',
];

/** The keys of a KubeStaticPodConfig document (modelled by cosid: all of them). */
export const KUBE_STATIC_POD_CONFIG_KEYS: readonly string[] = ['apiVersion', 'kind', 'name', 'pod'];

/** The apiVersion every Talos document kind is registered with. */
export const TALOS_DOCUMENT_API_VERSION = 'v1alpha1';

/** Every document kind Talos registers besides the v1alpha1 document (which has no kind). */
export const TALOS_DOCUMENT_KINDS: readonly string[] = [
  // block, storage
  'ExistingVolumeConfig', 'ExternalVolumeConfig', 'FilesystemScrubConfig', 'FilesystemTrimConfig', 'LVMLogicalVolumeConfig',
  'LVMVolumeGroupConfig', 'RAIDArrayConfig', 'RawVolumeConfig', 'SwapVolumeConfig', 'UserVolumeConfig', 'VolumeConfig',
  'ZswapConfig',
  // cluster, containers, CRI, security
  'DiscoveryIdentityConfig', 'DiscoveryServiceConfig', 'ContainerConfig', 'CRIBaseRuntimeSpecConfig', 'CRICustomizationConfig',
  'ImageCacheConfig', 'RegistryAuthConfig', 'RegistryMirrorConfig', 'RegistryTLSConfig', 'ImageVerificationConfig',
  'TrustedRootsConfig', 'PCIDriverRebindConfig', 'SideroLinkConfig',
  // Kubernetes
  'KubeAdmissionControlConfig', 'KubeAggregatorCAConfig', 'KubeAPIServerConfig', 'KubeAPIServerCAConfig',
  'KubeAuditPolicyConfig', 'KubeAuthenticationConfig', 'KubeAuthorizerConfig', 'KubeClusterConfig',
  'KubeControllerManagerConfig', 'KubeCoreDNSConfig', 'KubeCredentialProviderConfig', 'KubeEtcdEncryptionConfig',
  'KubeExternalManifestConfig', 'KubeFlannelCNIConfig', 'KubeInlineManifestConfig', 'KubeNetworkConfig', 'KubeNodeConfig',
  'KubePrismConfig', 'KubeProxyConfig', 'KubeSchedulerConfig', 'KubeServiceAccountConfig', 'KubeStaticPodConfig',
  'KubeTalosAPIAccessConfig', 'KubeletConfig',
  // network
  'BGPInstanceConfig', 'BlackholeRouteConfig', 'BondConfig', 'BridgeConfig', 'DHCPv4Config', 'DHCPv6Config',
  'DummyLinkConfig', 'EthernetConfig', 'HCloudVIPConfig', 'HostnameConfig', 'HTTPProbeConfig', 'KubeSpanConfig',
  'KubeSpanEndpointsConfig', 'Layer2VIPConfig', 'LinkAliasConfig', 'LinkConfig', 'NetworkDefaultActionConfig',
  'NetworkRuleConfig', 'ResolverConfig', 'RoutingRuleConfig', 'StaticHostConfig', 'TCPProbeConfig', 'TimeSyncConfig',
  'VethConfig', 'VLANConfig', 'VRFConfig', 'WireguardConfig',
  // runtime
  'EnvironmentConfig', 'EtcFileConfig', 'EventSinkConfig', 'ExtensionServiceConfig', 'KernelModuleConfig',
  'KmsgLogConfig', 'OOMConfig', 'SecurityProfileConfig', 'SysctlConfig', 'SysfsConfig', 'UdevRulesConfig',
  'UnattendedInstallConfig', 'WatchdogTimerConfig',
];

/**
 * The known name closest to `name`, when it is close enough to be a typo: case aside, at most one edit for short
 * names and about one in three for long ones (a swap of two neighbours counts as one edit).
 */
export function closest(name: string, known: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  const limit = Math.max(1, Math.floor(lower.length / 3));
  let best: { name: string; distance: number } | undefined;
  for (const candidate of known) {
    const d = editDistance(lower, candidate.toLowerCase(), limit);
    if (d <= limit && (best === undefined || d < best.distance)) best = { name: candidate, distance: d };
  }
  return best?.name;
}

/** Optimal string alignment distance, given up (limit + 1) once it cannot come under the limit. */
function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) > limit) return limit + 1;
  let prevPrev: number[] = [];
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((prev[j] ?? Infinity) + 1, (row[j - 1] ?? Infinity) + 1, (prev[j - 1] ?? Infinity) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, (prevPrev[j - 2] ?? Infinity) + 1);
      row.push(d);
      rowMin = Math.min(rowMin, d);
    }
    if (rowMin > limit) return limit + 1;
    prevPrev = prev;
    prev = row;
  }
  return prev[b.length] ?? limit + 1;
}
