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

  it('accepts a config without pods', () => {
    expect(parseMachineConfig('version: v1alpha1\nmachine:\n  type: worker\n', 'm.yaml').pods).toEqual([]);
  });
});
