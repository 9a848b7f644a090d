// Static pod validation: the messages a kubelet gives, from the Kubernetes schema and the kubelet's rules.
import { describe, expect, it } from 'vitest';
import { validateStaticPod } from '../server/config/pod-rules.js';
import type { Json } from '../shared/wire.js';
import { pod } from './harness.js';

const v = (p: { [key: string]: Json }) => validateStaticPod(p)?.message;

describe('validateStaticPod', () => {
  it('accepts the nginx pod of the Talos guide and a realistic control-plane pod', () => {
    expect(v(pod('nginx'))).toBeUndefined();
    const apiserver = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kube-apiserver', namespace: 'kube-system', labels: { tier: 'control-plane' } },
      spec: {
        hostNetwork: true,
        priorityClassName: 'system-cluster-critical',
        containers: [
          {
            name: 'kube-apiserver',
            image: 'registry.k8s.io/kube-apiserver:v1.34.1',
            command: ['/usr/local/bin/kube-apiserver', '--secure-port=6443'],
            env: [{ name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }],
            volumeMounts: [{ name: 'secrets', mountPath: '/system/secrets', readOnly: true }],
            resources: { requests: { cpu: '200m', memory: '512Mi' } },
            livenessProbe: { httpGet: { host: '127.0.0.1', path: '/livez', port: 6443, scheme: 'HTTPS' } },
            ports: [{ containerPort: 6443, name: 'https', protocol: 'TCP' }],
          },
        ],
        volumes: [{ name: 'secrets', hostPath: { path: '/system/secrets/kubernetes/kube-apiserver' } }],
      },
    };
    expect(v(apiserver)).toBeUndefined();
  });

  it('gives the kubelet message for a pod without containers', () => {
    expect(v({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: {} })).toBe('invalid pod: [spec.containers: Required value]');
  });

  it.each([
    ['no name', { apiVersion: 'v1', kind: 'Pod', metadata: {}, spec: { containers: [{ name: 'a', image: 'b' }] } }, 'metadata.name: Required value'],
    ['a bad name', { ...pod('x'), metadata: { name: 'Not_OK' } }, 'metadata.name: Invalid value: "Not_OK": a lowercase RFC 1123 subdomain'],
    ['a bad namespace', { ...pod('x'), metadata: { name: 'x', namespace: 'a.b' } }, 'metadata.namespace: Invalid value: "a.b": a lowercase RFC 1123 label'],
    ['another kind', { ...pod('x'), kind: 'Deployment' }, 'kind: Invalid value: "Deployment": must be Pod'],
    ['duplicate containers', { ...pod('x'), spec: { containers: [{ name: 'a', image: 'b' }, { name: 'a', image: 'c' }] } }, 'spec.containers[1].name: Duplicate value: "a"'],
    ['no image', { ...pod('x'), spec: { containers: [{ name: 'a' }] } }, 'spec.containers[0].image: Required value'],
    ['a port as a string', { ...pod('x'), spec: { containers: [{ name: 'a', image: 'b', ports: [{ containerPort: 'http' }] }] } }, 'spec.containers[0].ports[0].containerPort: Invalid value: "http": must be integer'],
    ['a port out of range', { ...pod('x'), spec: { containers: [{ name: 'a', image: 'b', ports: [{ containerPort: 70000 }] }] } }, 'spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535'],
    ['a bogus restart policy', { ...pod('x'), spec: { restartPolicy: 'Sometimes', containers: [{ name: 'a', image: 'b' }] } }, 'spec.restartPolicy: Unsupported value: "Sometimes"'],
  ] as const)('rejects %s', (_name, p, fragment) => {
    expect(v(p as { [key: string]: Json })).toContain(fragment);
  });

  it('lists several problems in a stable order, without duplicates', () => {
    const msg = v({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [{ image: 'b' }, { name: 'c' }] } });
    expect(msg).toBe('invalid pod: [spec.containers[0].name: Required value, spec.containers[1].image: Required value]');
  });

  it.each([
    { metadata: null, spec: [] },
    { apiVersion: 1, kind: null, metadata: 'x', spec: 'y' },
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: 'nope' } },
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [null, 3, []] } },
  ] as { [key: string]: Json }[])('never throws on garbage %#', (p) => {
    expect(v(p)).toMatch(/^invalid pod: \[.+\]$/);
  });
});
