// Machine config parsing: Talos IDs, warnings for what we ignore, clear errors with file and line.
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
kind: SomethingNew
name: x
`;

describe('parseMachineConfig', () => {
  it('reads machine.pods with Talos IDs and warns about documents it ignores', () => {
    const cfg = parseMachineConfig(CONFIG, 'machine.yaml');
    expect(cfg.pods.map((p) => p.id)).toEqual(['default-nginx', 'monitoring-agent']);
    expect(cfg.pods[0]?.pod).toMatchObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'nginx' } });
    expect(cfg.warnings).toEqual(['machine.yaml:23: ignoring document "SomethingNew"']);
  });

  it('reports YAML errors with file, line and column', () => {
    expect(() => parseMachineConfig('version: v1alpha1\nmachine:\n  pods: [\n', 'bad.yaml')).toThrow(/^bad\.yaml:\d+:\d+: /);
  });

  it.each([
    ['no v1alpha1 document', 'kind: Other\n', /no v1alpha1 machine config document/],
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

  it('warns about unknown fields with their line', () => {
    const cfg = parseMachineConfig('version: v1alpha1\nmachine:\n  type: worker\n  flavour: spicy\nextra: 1\n', 'm.yaml');
    expect(cfg.warnings).toEqual(['m.yaml:5: ignoring unknown field "extra"', 'm.yaml:4: ignoring unknown field "machine.flavour"']);
  });

  it('accepts a config without pods', () => {
    expect(parseMachineConfig('version: v1alpha1\nmachine:\n  type: worker\n', 'm.yaml').pods).toEqual([]);
  });
});
