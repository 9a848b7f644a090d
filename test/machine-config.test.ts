// Machine config parsing: Talos IDs, warnings for what we ignore, clear errors with file and line, and Talos's
// strictness: unknown keys and unknown document kinds are refused.
import { describe, expect, it } from 'vitest';
import { parseMachineConfig } from '../server/config/machine-config.js';

const CONFIG = `version: v1alpha1
machine:
  type: worker
  pods:
    - apiVersion: v1
      kind: Pod
      metadata:
        name: nginx
      spec:
        containers:
          - name: nginx
            image: nginx
    - apiVersion: v1
      kind: Pod
      metadata:
        name: agent
        namespace: monitoring
      spec:
        containers:
          - name: agent
            image: agent:1
---
apiVersion: v1alpha1
kind: HostnameConfig
hostname: node-1
`;

/** The message parseMachineConfig refuses the text with ('' when it does not). */
function refusal(text: string, source: string): string {
  try {
    parseMachineConfig(text, source);
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
  return '';
}

describe('parseMachineConfig', () => {
  it('reads machine.pods with Talos IDs and warns about the Talos documents it does not model', () => {
    const cfg = parseMachineConfig(CONFIG, 'machine.yaml');
    expect(cfg.pods.map((p) => p.id)).toEqual(['default-nginx', 'monitoring-agent']);
    expect(cfg.pods[0]?.pod).toMatchObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'nginx' } });
    expect(cfg.warnings).toEqual(['machine.yaml:23: ignoring the HostnameConfig document (a Talos document cosid does not model)']);
  });

  it('reports YAML errors with file, line and column', () => {
    expect(() => parseMachineConfig('version: v1alpha1\nmachine:\n  pods: [\n', 'bad.yaml')).toThrow(/^bad\.yaml:\d+:\d+: /);
  });

  it.each([
    // The yaml library's own message ends "at line 4, column 1:" before a snippet: one line, ending with its reason.
    ['an unclosed flow list', 'version: v1alpha1\nmachine:\n  pods: [\n', 'bad.yaml:4:1: Flow sequence in block collection must be sufficiently indented and end with a ], after "pods: [" (line 3)'],
    ['a key without a value', 'version: v1alpha1\nmachine\n', 'bad.yaml:2:1: Implicit map keys need to be followed by map values, at "machine"'],
    ['a tab as indentation', 'version: v1alpha1\nmachine:\n\ttype: worker\n', 'bad.yaml:3:1: Tabs are not allowed as indentation, at "type: ..."'],
    ['a misaligned key', 'version: v1alpha1\nmachine:\n  pods:\n    - name: x\n   bad: 1\n', 'bad.yaml:5:1: All mapping items must start at the same column, at "bad: ..."'],
    // The message reaches os:reader (MachineConfigStatus) and a Talos config holds secrets: values are never quoted.
    ['a broken line after a secret', 'version: v1alpha1\nmachine:\n  token: s3cr3t.t0k3n\n   ca: {crt: LS0tLS1CRUdJTi}\n', 'bad.yaml:3:10: Nested mappings are not allowed in compact mappings, at "token: ..."'],
  ])('says a YAML error whole, on one line: %s', (_name, text, message) => {
    const got = refusal(text, 'bad.yaml');
    expect(got).toBe(message);
    expect(got).not.toMatch(/\n|:$/);
  });

  it.each([
    ['no v1alpha1 document', 'apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: x\n', /no v1alpha1 machine config document/],
    ['pods not a list', 'version: v1alpha1\nmachine:\n  pods: {}\n', /machine\.pods must be a list/],
    ['pod without a name', 'version: v1alpha1\nmachine:\n  pods:\n    - kind: Pod\n', /^m\.yaml:4 \(machine\.pods\[0\]\): metadata\.name is required$/],
    ['duplicate pods', 'version: v1alpha1\nmachine:\n  pods:\n    - metadata: {name: a}\n    - metadata: {name: a, namespace: default}\n', /duplicate static pod default-a/],
    ['a YAML alias bomb', `version: v1alpha1\nmachine:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n  e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n`, /alias/i],
  ])('rejects %s', (_name, text, message) => {
    expect(() => parseMachineConfig(text, 'm.yaml')).toThrow(message);
  });

  it.each([
    ['a file over 4 MiB', `version: v1alpha1\nmachine:\n  pods: []\n# ${'x'.repeat(4 << 20)}\n`, /larger than 4194304 bytes/],
    ['nesting deeper than 64 levels', `version: v1alpha1\nmachine:\n  pods:\n    - metadata: {name: deep}\n      spec: ${'['.repeat(200)}${']'.repeat(200)}\n`, /nested deeper than 64 levels/],
    ['a list for machine', 'version: v1alpha1\nmachine: [1, 2]\n', /machine must be a mapping/],
    ['a number for machine.type', 'version: v1alpha1\nmachine:\n  type: 7\n', /machine\.type must be one of worker, controlplane, init/],
    ['a string for a pod', 'version: v1alpha1\nmachine:\n  pods: [nginx]\n', /machine\.pods\[0\]\): must be a Pod object/],
    ['a non-string namespace', 'version: v1alpha1\nmachine:\n  pods:\n    - metadata: {name: a, namespace: [x]}\n', /metadata\.namespace must be a string/],
    ['duplicate keys', 'version: v1alpha1\nmachine:\n  type: worker\n  type: controlplane\n', /m\.yaml:4:\d+: Map keys must be unique/],
    ['a KubeStaticPodConfig with a bad name', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nkind: KubeStaticPodConfig\nname: Bad_Name\npod: {}\n', /must be a DNS-1123 name/],
  ])('rejects %s with a clear error', (_name, text, message) => {
    expect(() => parseMachineConfig(text, 'm.yaml')).toThrow(message);
  });

  it('refuses a key Talos does not know, with file, line, column, its path and the key it resembles', () => {
    const text = 'version: v1alpha1\nmachine:\n  type: worker\n  podz:\n    - metadata: {name: nginx}\n';
    expect(refusal(text, 'm.yaml')).toBe('m.yaml:4:3: unknown key machine.podz (did you mean machine.pods?)');
  });

  it.each([
    ['at the top', 'version: v1alpha1\nmachnie:\n  type: worker\n', 'm.yaml:2:1: unknown key machnie (did you mean machine?)'],
    ['without a near key', 'version: v1alpha1\nmachine:\n  flavour: spicy\n', 'm.yaml:3:3: unknown key machine.flavour'],
    ['in cluster', 'version: v1alpha1\nmachine: {}\ncluster:\n  apiServers: {image: x}\n', 'm.yaml:4:3: unknown key cluster.apiServers (did you mean cluster.apiServer?)'],
    ['case aside', 'version: v1alpha1\nmachine:\n  Pods: []\n', 'm.yaml:3:3: unknown key machine.Pods (did you mean machine.pods?)'],
    ['in a KubeStaticPodConfig', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nkind: KubeStaticPodConfig\nname: agent\npods: {}\n', 'm.yaml:7:1: unknown key pods in a KubeStaticPodConfig document (did you mean pod?)'],
    ['several, in one message', 'version: v1alpha1\nextra: 1\nmachine:\n  podz: []\n  typ: worker\n', 'm.yaml:2:1: unknown key extra; m.yaml:4:3: unknown key machine.podz (did you mean machine.pods?); m.yaml:5:3: unknown key machine.typ (did you mean machine.type?)'],
    ['behind an alias', 'x: &m {podz: []}\nversion: v1alpha1\nmachine: *m\n', 'm.yaml:1:1: unknown key x; m.yaml:1:8: unknown key machine.podz (did you mean machine.pods?)'],
  ])('refuses an unknown key %s', (_name, text, message) => {
    expect(refusal(text, 'm.yaml')).toBe(message);
  });

  it('names five unknown keys and counts the rest', () => {
    const text = `version: v1alpha1\nmachine:\n${['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7'].map((k) => `  ${k}: 1\n`).join('')}`;
    expect(() => parseMachineConfig(text, 'm.yaml')).toThrow(/m\.yaml:7:3: unknown key machine\.a5; and 2 more unknown keys$/);
  });

  it.each([
    ['a kind Talos does not know', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nkind: SomethingNew\nname: x\n', 'm.yaml:5:7: unknown document kind SomethingNew: Talos refuses documents it does not know'],
    ['a misspelt kind', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nkind: KubeStaticPodConfigs\nname: x\npod: {}\n', 'm.yaml:5:7: unknown document kind KubeStaticPodConfigs (did you mean KubeStaticPodConfig?): Talos refuses documents it does not know'],
    ['a known kind at another apiVersion', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1beta1\nkind: HostnameConfig\n', 'm.yaml:5:7: HostnameConfig needs apiVersion: v1alpha1 (got "v1beta1")'],
    ['an apiVersion without a kind', 'version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nname: x\n', 'm.yaml:4: document has apiVersion but no kind'],
  ])('refuses %s', (_name, text, message) => {
    expect(refusal(text, 'm.yaml')).toBe(message);
  });

  it('loads a full Talos config: every section it does not model, nested keys of its own, and other Talos documents', () => {
    const cfg = parseMachineConfig(TALOS_CONFIG, 'controlplane.yaml');
    expect(cfg.machineType).toBe('controlplane');
    expect(cfg.pods.map((p) => p.id)).toEqual(['agent', 'default-nginx', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler']);
    expect(cfg.warnings).toEqual([
      expect.stringMatching(/^controlplane\.yaml:\d+: ignoring the HostnameConfig document/),
      expect.stringMatching(/^controlplane\.yaml:\d+: ignoring the LinkConfig document/),
    ]);
  });

  it('accepts a config without pods', () => {
    expect(parseMachineConfig('version: v1alpha1\nmachine:\n  type: worker\n', 'm.yaml').pods).toEqual([]);
  });
});

// A Talos controlplane config as `talosctl gen config` writes it (secrets shortened), with cosid's pods added.
const TALOS_CONFIG = `version: v1alpha1
debug: false
persist: true
machine:
  type: controlplane
  token: abcdef.0123456789abcdef
  ca:
    crt: LS0t
    key: LS0t
  certSANs: []
  kubelet:
    image: ghcr.io/siderolabs/kubelet:v1.34.1
    defaultRuntimeSeccompProfileEnabled: true
    disableManifestsDirectory: true
  network:
    hostname: cp-1
    interfaces:
      - interface: eth0
        dhcp: true
  install:
    disk: /dev/sda
    image: ghcr.io/siderolabs/installer:v1.13.0
    wipe: false
  registries: {}
  features:
    rbac: true
    stableHostname: true
    apidCheckExtKeyUsage: true
    diskQuotaSupport: true
    kubePrism:
      enabled: true
      port: 7445
    hostDNS:
      enabled: true
      forwardKubeDNSToHost: true
  nodeLabels:
    node.kubernetes.io/exclude-from-external-load-balancers: ""
  pods:
    - apiVersion: v1
      kind: Pod
      metadata:
        name: nginx
      spec:
        containers:
          - name: nginx
            image: nginx
cluster:
  id: aWQ=
  secret: c2VjcmV0
  controlPlane:
    endpoint: https://cp-1:6443
  clusterName: demo
  network:
    dnsDomain: cluster.local
    podSubnets:
      - 10.244.0.0/16
    serviceSubnets:
      - 10.96.0.0/12
  token: abcdef.0123456789abcdef
  secretboxEncryptionSecret: c2VjcmV0
  ca:
    crt: LS0t
    key: LS0t
  aggregatorCA:
    crt: LS0t
    key: LS0t
  serviceAccount:
    key: LS0t
  apiServer:
    image: registry.k8s.io/kube-apiserver:v1.34.1
    certSANs:
      - cp-1
    disablePodSecurityPolicy: true
    admissionControl:
      - name: PodSecurity
        configuration:
          apiVersion: pod-security.admission.config.k8s.io/v1alpha1
          defaults:
            enforce: baseline
    auditPolicy:
      apiVersion: audit.k8s.io/v1
      kind: Policy
      rules:
        - level: Metadata
  controllerManager:
    image: registry.k8s.io/kube-controller-manager:v1.34.1
  proxy:
    image: registry.k8s.io/kube-proxy:v1.34.1
  scheduler:
    image: registry.k8s.io/kube-scheduler:v1.34.1
  discovery:
    enabled: true
    registries:
      kubernetes:
        disabled: true
      service: {}
  etcd:
    ca:
      crt: LS0t
      key: LS0t
  extraManifests: []
  inlineManifests: []
---
apiVersion: v1alpha1
kind: HostnameConfig
auto: stable
---
apiVersion: v1alpha1
kind: LinkConfig
name: eth1
up: true
---
apiVersion: v1alpha1
kind: KubeStaticPodConfig
name: agent
pod:
  apiVersion: v1
  kind: Pod
  metadata:
    name: agent
  spec:
    containers:
      - name: agent
        image: agent:1
`;
