// The control-plane static pods Talos generates on a controlplane node, with its labels.
import type { Json } from '../../shared/wire.js';
import type { StaticPodEntry } from './machine-config.js';

export interface ControlPlaneImages {
  apiServer: string;
  controllerManager: string;
  scheduler: string;
}

export const DEFAULT_KUBERNETES_VERSION = 'v1.34.1';
export const DEFAULT_IMAGES: ControlPlaneImages = {
  apiServer: `registry.k8s.io/kube-apiserver:${DEFAULT_KUBERNETES_VERSION}`,
  controllerManager: `registry.k8s.io/kube-controller-manager:${DEFAULT_KUBERNETES_VERSION}`,
  scheduler: `registry.k8s.io/kube-scheduler:${DEFAULT_KUBERNETES_VERSION}`,
};

/** The tag of an image reference (`repo:tag` or `repo:tag@digest`); the default version when it has none. */
export function imageVersion(image: string): string {
  const noDigest = image.split('@')[0] ?? image;
  const lastSlash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > lastSlash ? noDigest.slice(colon + 1) : DEFAULT_KUBERNETES_VERSION;
}

function pod(component: string, image: string, port: number, args: string[]): { [key: string]: Json } {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: component,
      namespace: 'kube-system',
      labels: {
        tier: 'control-plane',
        'k8s-app': component,
        component,
        'app.kubernetes.io/name': component,
        'app.kubernetes.io/version': imageVersion(image),
        'app.kubernetes.io/component': 'control-plane',
        'app.kubernetes.io/managed-by': 'Talos',
      },
    },
    spec: {
      hostNetwork: true,
      priorityClassName: 'system-cluster-critical',
      containers: [
        {
          name: component,
          image,
          command: [`/usr/local/bin/${component}`, ...args],
          livenessProbe: { httpGet: { host: '127.0.0.1', path: '/livez', port, scheme: 'HTTPS' }, initialDelaySeconds: 15 },
          resources: { requests: { cpu: component === 'kube-apiserver' ? '200m' : '50m', memory: component === 'kube-apiserver' ? '512Mi' : '256Mi' } },
        },
      ],
    },
  };
}

export function controlPlanePods(images: Partial<ControlPlaneImages>, origin: string): StaticPodEntry[] {
  const i = { ...DEFAULT_IMAGES, ...images };
  return [
    { id: 'kube-apiserver', origin, pod: pod('kube-apiserver', i.apiServer, 6443, ['--secure-port=6443', '--etcd-servers=https://localhost:2379']) },
    { id: 'kube-controller-manager', origin, pod: pod('kube-controller-manager', i.controllerManager, 10257, ['--leader-elect=true', '--secure-port=10257']) },
    { id: 'kube-scheduler', origin, pod: pod('kube-scheduler', i.scheduler, 10259, ['--leader-elect=true', '--secure-port=10259']) },
  ];
}
