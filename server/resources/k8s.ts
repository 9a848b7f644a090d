// The static pod resource types and the machine config, as Talos defines them (talos-static-pods.md,
// talos-machine-config-api.md), and cosid's MachineConfigStatus.
import { toStruct, wire, type Json } from '../../shared/wire.js';
import type { Registry } from './registry.js';

export const K8S_NAMESPACE = 'k8s';
export const STATIC_POD_TYPE = 'StaticPods.kubernetes.talos.dev';
export const STATIC_POD_STATUS_TYPE = 'StaticPodStatuses.kubernetes.talos.dev';
export const STATIC_POD_SERVER_STATUS_TYPE = 'StaticPodServerStatuses.kubernetes.talos.dev';
export const STATIC_POD_SERVER_STATUS_ID = 'static-pod-server-status';
export const CONFIG_NAMESPACE = 'config';
export const MACHINE_CONFIG_STATUS_TYPE = 'MachineConfigStatuses.config.cosi-pods.dev';
export const MACHINE_CONFIG_STATUS_ID = 'machine-config';
/** Talos's machine config resource: the config text as given, `v1alpha1` running and `persistent` saved. */
export const MACHINE_CONFIG_TYPE = 'MachineConfigs.config.talos.dev';
export const RUNNING_CONFIG_ID = 'v1alpha1';
export const SAVED_CONFIG_ID = 'persistent';

/** Set on a StaticPod that failed validation (it is not served to the kubelet). */
export const INVALID_LABEL = 'cosi-pods.dev/invalid';
/** Set on a StaticPodStatus that was not confirmed by the last kubelet poll. */
export const STALE_LABEL = 'cosi-pods.dev/stale';
/** On a StaticPodStatus: its containers' IDs as `containers -k` and `logs -k` name them, comma-separated. */
export const CONTAINERS_ANNOTATION = 'cosi-pods.dev/containers';

function asObject(spec: Json): { [key: string]: Json } {
  return spec !== null && typeof spec === 'object' && !Array.isArray(spec) ? spec : {};
}

export function registerK8sTypes(registry: Registry): void {
  registry.registerNamespace(CONFIG_NAMESPACE, 'Machine configuration state.');
  // Registered before MachineConfigStatus: Talos's aliases mc and mcs are this type's, so MachineConfigStatus's
  // derived short alias mcs gives way (see Registry.register).
  registry.register({
    type: MACHINE_CONFIG_TYPE,
    displayType: 'MachineConfig',
    defaultNamespace: CONFIG_NAMESPACE,
    aliases: ['machineconfig', 'mc', 'mcs'],
    // The whole config, keys and tokens of other Talos documents included: os:admin only, as on Talos.
    sensitive: true,
    encodeProto: (spec) => wire.machineConfigSpec.encode({ yamlMarshalled: Buffer.from(typeof spec === 'string' ? spec : '', 'utf8') }),
  });
  registry.register({
    type: MACHINE_CONFIG_STATUS_TYPE,
    displayType: 'MachineConfigStatus',
    defaultNamespace: CONFIG_NAMESPACE,
    // Its derived mcs is Talos's alias of MachineConfig.
    aliases: ['mcstatus'],
    printColumns: [
      { name: 'Pods', jsonPath: '{.pods}' },
      { name: 'Invalid', jsonPath: '{.invalidPods}' },
      { name: 'Error', jsonPath: '{.error}' },
    ],
  });
  registry.registerNamespace(K8S_NAMESPACE, 'Kubernetes resources of the node.');
  registry.register({
    type: STATIC_POD_TYPE,
    displayType: 'StaticPod',
    defaultNamespace: K8S_NAMESPACE,
    // An invalid pod carries the kubelet-style reason in its status (it is never sent to the kubelet).
    printColumns: [{ name: 'Error', jsonPath: '{.status.message}' }],
    encodeProto: (spec) => wire.staticPodSpec.encode({ pod: toStruct(asObject(spec)) }),
  });
  registry.register({
    type: STATIC_POD_STATUS_TYPE,
    displayType: 'StaticPodStatus',
    defaultNamespace: K8S_NAMESPACE,
    aliases: ['podstatus'],
    printColumns: [
      { name: 'Ready', jsonPath: '{.conditions[?(@.type=="Ready")].status}' },
      // One count per container, in the pod's order, as the kubelet reports them.
      { name: 'Restarts', jsonPath: '{.containerStatuses[*].restartCount}' },
      // Set while the kubelet cannot be reached: the last known status is kept and marked.
      { name: 'Stale', jsonPath: '{.conditions[?(@.type=="Stale")].reason}' },
    ],
    encodeProto: (spec) => wire.staticPodStatusSpec.encode({ podStatus: toStruct(asObject(spec)) }),
  });
  registry.register({
    type: STATIC_POD_SERVER_STATUS_TYPE,
    displayType: 'StaticPodServerStatus',
    defaultNamespace: K8S_NAMESPACE,
    encodeProto: (spec) => {
      const url = asObject(spec)['url'];
      return wire.staticPodServerStatusSpec.encode({ url: typeof url === 'string' ? url : '' });
    },
  });
}
