// Static pod validation: the Kubernetes Pod schema (kubernetes-models) plus the kubelet's own rules,
// with the messages a kubelet prints.
import { describe, expect, it } from 'vitest';
import { validateStaticPod } from '../server/config/pod-validation.js';
import type { Json } from '../shared/wire.js';

type Pod = { [key: string]: Json };
const v = (p: Pod) => validateStaticPod(p)?.message;
const nginx = (): Pod => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'nginx' }, spec: { containers: [{ name: 'nginx', image: 'nginx' }] } });
/** The nginx pod with other containers (and optionally other spec fields). */
const withContainers = (containers: Json[], spec: Pod = {}): Pod => ({ ...nginx(), spec: { ...spec, containers } });

const SUBDOMAIN =
  "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL =
  "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

const apiserver = (): Pod => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'kube-apiserver',
    namespace: 'kube-system',
    labels: { component: 'kube-apiserver', tier: 'control-plane', 'k8s-app': 'kube-apiserver' },
    annotations: { 'talos.dev/config-version': '1', 'talos.dev/secrets-version': '2' },
  },
  spec: {
    hostNetwork: true,
    priorityClassName: 'system-cluster-critical',
    securityContext: { runAsNonRoot: true, runAsUser: 65534, seccompProfile: { type: 'RuntimeDefault' } },
    tolerations: [{ operator: 'Exists' }],
    containers: [
      {
        name: 'kube-apiserver',
        image: 'registry.k8s.io/kube-apiserver:v1.34.1',
        imagePullPolicy: 'IfNotPresent',
        command: ['/usr/local/bin/kube-apiserver'],
        args: ['--secure-port=6443', '--etcd-servers=https://localhost:2379', '--authorization-mode=Node,RBAC'],
        env: [
          { name: 'POD_IP', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'status.podIP' } } },
          { name: 'GOMAXPROCS', value: '2' },
        ],
        ports: [{ name: 'https', containerPort: 6443, protocol: 'TCP' }],
        volumeMounts: [
          { name: 'secrets', mountPath: '/system/secrets/kubernetes/kube-apiserver', readOnly: true },
          { name: 'audit', mountPath: '/var/log/audit/kube' },
        ],
        resources: { requests: { cpu: '200m', memory: '512Mi' }, limits: { memory: '2Gi' } },
        livenessProbe: {
          httpGet: { host: '127.0.0.1', path: '/livez', port: 6443, scheme: 'HTTPS' },
          initialDelaySeconds: 10,
          periodSeconds: 10,
          timeoutSeconds: 15,
          failureThreshold: 8,
        },
        securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['NET_BIND_SERVICE'] } },
      },
    ],
    volumes: [
      { name: 'secrets', hostPath: { path: '/system/secrets/kubernetes/kube-apiserver' } },
      { name: 'audit', hostPath: { path: '/var/log/audit/kube', type: 'DirectoryOrCreate' } },
    ],
  },
});

describe('validateStaticPod', () => {
  it('accepts the nginx pod', () => {
    expect(validateStaticPod(nginx())).toBeUndefined();
  });

  it('accepts a realistic control-plane pod', () => {
    expect(v(apiserver())).toBeUndefined();
  });

  it('ignores unknown fields, as the kubelet does', () => {
    const p = apiserver();
    p['extra'] = { anything: [1, 2, 3] };
    const spec = p['spec'];
    if (typeof spec === 'object' && spec !== null && !Array.isArray(spec)) spec['futureField'] = { nested: true };
    expect(v(p)).toBeUndefined();
  });

  it('gives exactly the kubelet message for a pod without containers', () => {
    const r = validateStaticPod({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: {} });
    expect(r?.message).toBe('invalid pod: [spec.containers: Required value]');
    expect(r?.problems).toEqual([{ field: 'spec.containers', detail: 'Required value' }]);
    expect(v(withContainers([]))).toBe('invalid pod: [spec.containers: Required value]');
    expect(v({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' } })).toBe('invalid pod: [spec.containers: Required value]');
  });

  it('requires a name', () => {
    const msg = 'invalid pod: [metadata.name: Required value: name or generateName is required]';
    expect(v({ ...nginx(), metadata: {} })).toBe(msg);
    expect(v({ ...nginx(), metadata: { name: '' } })).toBe(msg);
    expect(v({ ...nginx(), metadata: { name: null } })).toBe(msg);
    expect(v({ apiVersion: 'v1', kind: 'Pod', spec: { containers: [{ name: 'a', image: 'b' }] } })).toBe(msg);
  });

  it('rejects a name that is not a DNS-1123 subdomain', () => {
    expect(v({ ...nginx(), metadata: { name: 'Foo' } })).toBe(`invalid pod: [metadata.name: Invalid value: "Foo": ${SUBDOMAIN}]`);
    expect(v({ ...nginx(), metadata: { name: 'a.b-c.d' } })).toBeUndefined();
    expect(v({ ...nginx(), metadata: { name: '-a' } })).toContain('metadata.name: Invalid value: "-a": a lowercase RFC 1123 subdomain');
    expect(validateStaticPod({ ...nginx(), metadata: { name: 'a'.repeat(254) } })?.problems).toEqual([
      { field: 'metadata.name', detail: `Invalid value: "${'a'.repeat(254)}": must be no more than 253 characters` },
    ]);
    // A longer value is shown cut short; both messages of IsDNS1123Subdomain apply, sorted.
    expect(validateStaticPod({ ...nginx(), metadata: { name: 'A'.repeat(300) } })?.problems).toEqual([
      { field: 'metadata.name', detail: `Invalid value: "${'A'.repeat(255)}...: ${SUBDOMAIN}` },
      { field: 'metadata.name', detail: `Invalid value: "${'A'.repeat(255)}...: must be no more than 253 characters` },
    ]);
    expect(v({ ...nginx(), metadata: { name: 'a'.repeat(253) } })).toBeUndefined();
  });

  it('rejects a namespace that is not a DNS-1123 label', () => {
    expect(v({ ...nginx(), metadata: { name: 'x', namespace: 'a.b' } })).toBe(`invalid pod: [metadata.namespace: Invalid value: "a.b": ${LABEL}]`);
    expect(v({ ...nginx(), metadata: { name: 'x', namespace: 'kube-system' } })).toBeUndefined();
    expect(v({ ...nginx(), metadata: { name: 'x', namespace: 'n'.repeat(64) } })).toContain('must be no more than 63 characters');
  });

  it('rejects duplicate container names, across init containers too', () => {
    expect(v(withContainers([{ name: 'x', image: 'a' }, { name: 'x', image: 'b' }]))).toBe('invalid pod: [spec.containers[1].name: Duplicate value: "x"]');
    expect(v(withContainers([{ name: 'x', image: 'a' }], { initContainers: [{ name: 'x', image: 'b' }] }))).toBe(
      'invalid pod: [spec.initContainers[0].name: Duplicate value: "x"]',
    );
  });

  it('requires container names that are DNS-1123 labels, and images', () => {
    expect(v(withContainers([{ image: 'a' }]))).toBe('invalid pod: [spec.containers[0].name: Required value]');
    expect(v(withContainers([{ name: 'Web_1', image: 'a' }]))).toBe(`invalid pod: [spec.containers[0].name: Invalid value: "Web_1": ${LABEL}]`);
    expect(v(withContainers([{ name: 'a' }]))).toBe('invalid pod: [spec.containers[0].image: Required value]');
    expect(v(withContainers([{ name: 'a', image: '' }]))).toBe('invalid pod: [spec.containers[0].image: Required value]');
    expect(v(withContainers([{ name: 'a', image: 'b' }], { initContainers: [{ name: 'init' }] }))).toBe('invalid pod: [spec.initContainers[0].image: Required value]');
  });

  it('rejects another kind or apiVersion', () => {
    expect(v({ ...nginx(), kind: 'Deployment' })).toBe('invalid pod: [kind: Invalid value: "Deployment": must be Pod]');
    expect(v({ ...nginx(), apiVersion: 'apps/v1' })).toBe('invalid pod: [apiVersion: Invalid value: "apps/v1": must be v1]');
    const { apiVersion: _a, kind: _k, ...bare } = nginx();
    expect(v(bare)).toBe('invalid pod: [apiVersion: Required value, kind: Required value]');
  });

  it('rejects a port given as a string, and ports out of range', () => {
    expect(v(withContainers([{ name: 'a', image: 'b', ports: [{ containerPort: '80' }] }]))).toBe(
      'invalid pod: [spec.containers[0].ports[0].containerPort: Invalid value: "80": must be of type integer]',
    );
    expect(v(withContainers([{ name: 'a', image: 'b', ports: [{ containerPort: 70000 }, { containerPort: 0 }, { containerPort: 80, hostPort: -1 }] }]))).toBe(
      'invalid pod: [spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive, ' +
        'spec.containers[0].ports[1].containerPort: Required value, ' +
        'spec.containers[0].ports[2].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive]',
    );
    expect(v(withContainers([{ name: 'a', image: 'b', ports: [{ containerPort: 1 }, { containerPort: 65535, hostPort: 8080 }] }]))).toBeUndefined();
  });

  it('rejects a bogus restartPolicy with the supported values in the order Kubernetes gives them', () => {
    expect(v(withContainers([{ name: 'a', image: 'b' }], { restartPolicy: 'Sometimes' }))).toBe(
      'invalid pod: [spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"]',
    );
    for (const ok of ['Always', 'OnFailure', 'Never']) expect(v(withContainers([{ name: 'a', image: 'b' }], { restartPolicy: ok }))).toBeUndefined();
  });

  it('turns other schema errors into field errors with k8s paths', () => {
    const c = {
      name: 'a',
      image: 'b',
      imagePullPolicy: 'Sometimes',
      ports: [{ containerPort: 80, protocol: 5 }],
      livenessProbe: { httpGet: { port: true } },
      resources: { limits: { cpu: 'lots', memory: false } },
    };
    expect(validateStaticPod({ ...withContainers([c]), metadata: { name: 'x', labels: { app: 7 } } })?.problems).toEqual([
      { field: 'metadata.labels[app]', detail: 'Invalid value: 7: must be of type string' },
      { field: 'spec.containers[0].imagePullPolicy', detail: 'Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never"' },
      { field: 'spec.containers[0].livenessProbe.httpGet.port', detail: 'Invalid value: true: must be of type integer or string' },
      { field: 'spec.containers[0].ports[0].protocol', detail: 'Invalid value: 5: must be of type string' },
      {
        field: 'spec.containers[0].resources.limits[cpu]',
        detail: `Invalid value: "lots": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'`,
      },
      { field: 'spec.containers[0].resources.limits[memory]', detail: 'Invalid value: false: must be of type number or string' },
    ]);
    // A probe port may be a name (int-or-string).
    expect(v(withContainers([{ name: 'a', image: 'b', livenessProbe: { httpGet: { port: 'http' } } }]))).toBeUndefined();
    // The schema's required fields (ContainerPort.containerPort, a volume's name).
    expect(v(withContainers([{ name: 'a', image: 'b', ports: [{ name: 'http' }] }], { volumes: [{ hostPath: { path: '/x' } }] }))).toBe(
      'invalid pod: [spec.containers[0].ports[0].containerPort: Required value, spec.volumes[0].name: Required value]',
    );
  });

  it('treats null fields as not set, as Kubernetes decoding does', () => {
    expect(v(withContainers([{ name: 'a', image: 'b', imagePullPolicy: null, ports: null }], { restartPolicy: null, hostNetwork: null }))).toBeUndefined();
    expect(v({ ...nginx(), spec: null })).toBe('invalid pod: [spec.containers: Required value]');
  });

  it('lists several problems at once, sorted by field path then message, without duplicates', () => {
    const r = validateStaticPod({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'Web' },
      spec: {
        restartPolicy: 'Sometimes',
        containers: [{ image: 'x' }, { name: 'a' }, { name: 'a', image: 'y' }, ...Array.from({ length: 8 }, (_, i) => ({ name: `c${i}`, image: 'z' })), { name: 'z' }],
      },
    });
    expect(r?.problems.map((p) => p.field)).toEqual([
      'metadata.name',
      'spec.containers[0].name',
      'spec.containers[1].image',
      'spec.containers[2].name',
      'spec.containers[11].image',
      'spec.restartPolicy',
    ]);
    expect(r?.message).toBe(
      `invalid pod: [metadata.name: Invalid value: "Web": ${SUBDOMAIN}, spec.containers[0].name: Required value, spec.containers[1].image: Required value, ` +
        'spec.containers[2].name: Duplicate value: "a", spec.containers[11].image: Required value, ' +
        'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"]',
    );
    // Deterministic: the same pod in another key order gives the same message.
    const again = validateStaticPod({
      spec: {
        containers: [{ image: 'x' }, { name: 'a' }, { image: 'y', name: 'a' }, ...Array.from({ length: 8 }, (_, i) => ({ image: 'z', name: `c${i}` })), { name: 'z' }],
        restartPolicy: 'Sometimes',
      },
      metadata: { name: 'Web' },
      kind: 'Pod',
      apiVersion: 'v1',
    });
    expect(again?.message).toBe(r?.message);
  });

  it.each<[string, unknown]>([
    ['metadata null, spec an array', { metadata: null, spec: [] }],
    ['wrong types everywhere', { apiVersion: 1, kind: null, metadata: 'x', spec: 'y' }],
    ['containers a string', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: 'nope' } }],
    ['containers of garbage', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [null, 3, [], 'c'] } }],
    ['ports of garbage', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [{ name: 'a', image: 'b', ports: [null, 'x', { containerPort: 1.5 }] }] } }],
    ['metadata an array', { apiVersion: 'v1', kind: 'Pod', metadata: [], spec: { containers: [{ name: 'a', image: 'b' }] } }],
    ['an empty object', {}],
    ['null', null],
    ['an array', []],
    ['a number', 42],
    ['a string', 'pod'],
  ])('never throws on garbage: %s', (_name, input) => {
    // Garbage from a parsed YAML document arrives typed as an object; the validator must not trust that.
    const r = validateStaticPod(input as Pod);
    expect(r?.message).toMatch(/^invalid pod: \[.+\]$/);
    expect(r?.problems.length).toBeGreaterThan(0);
  });

  it('gives useful messages for garbage', () => {
    expect(v({ metadata: null, spec: [] })).toBe(
      'invalid pod: [apiVersion: Required value, kind: Required value, metadata.name: Required value: name or generateName is required, spec: Invalid value: []: must be of type object]',
    );
    expect(v({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [null, 3] } })).toBe(
      'invalid pod: [spec.containers[0]: Invalid value: null: must be of type object, spec.containers[1]: Invalid value: 3: must be of type object]',
    );
    // As above: an untyped caller's garbage, on purpose.
    expect(v(null as unknown as Pod)).toBe('invalid pod: [<pod>: Invalid value: null: must be of type object]');
  });

  it('stays fast and bounded on huge and deeply nested input', () => {
    let deep: Json = 'bottom';
    for (let i = 0; i < 100_000; i++) deep = [deep];
    const huge = 'x'.repeat(5_000_000);
    const containers = Array.from({ length: 5_000 }, (_, i) => ({ name: `c${i}`, image: 'i', ports: [{ containerPort: 80 }] }));
    const start = performance.now();
    const r = validateStaticPod({
      ...withContainers(containers, { nodeSelector: { deep }, unknown: deep }),
      metadata: { name: 'x', annotations: { big: huge, deep } },
    });
    expect(performance.now() - start).toBeLessThan(2_000);
    expect(r?.problems.map((p) => p.field)).toEqual(['metadata.annotations[deep]', 'spec.nodeSelector[deep]']);
    // The bad value is shown, cut short.
    expect(r?.message.length).toBeLessThan(1_000);
    expect(r?.problems[0]?.detail).toMatch(/^Invalid value: \[\[\[\[.*\.\.\.: must be of type string$/);
  });

  it('is cheap to call again and again (the validator is compiled once, by the library, ahead of time)', () => {
    const p = apiserver();
    const start = performance.now();
    for (let i = 0; i < 2_000; i++) expect(validateStaticPod(p)).toBeUndefined();
    expect(performance.now() - start).toBeLessThan(2_000);
  });
});
