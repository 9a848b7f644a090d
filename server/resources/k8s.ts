// The static pod resource types, as Talos defines them (talos-static-pods.md).
import { toStruct, wire, type Json } from '../../shared/wire.js';
import type { Registry } from './registry.js';

export const K8S_NAMESPACE = 'k8s';
export const STATIC_POD_TYPE = 'StaticPods.kubernetes.talos.dev';
export const STATIC_POD_STATUS_TYPE = 'StaticPodStatuses.kubernetes.talos.dev';
export const STATIC_POD_SERVER_STATUS_TYPE = 'StaticPodServerStatuses.kubernetes.talos.dev';
export const STATIC_POD_SERVER_STATUS_ID = 'static-pod-server-status';

function asObject(spec: Json): { [key: string]: Json } {
  return spec !== null && typeof spec === 'object' && !Array.isArray(spec) ? spec : {};
}

export function registerK8sTypes(registry: Registry): void {
  registry.registerNamespace(K8S_NAMESPACE, 'Kubernetes resources of the node.');
  registry.register({
    type: STATIC_POD_TYPE,
    displayType: 'StaticPod',
    defaultNamespace: K8S_NAMESPACE,
    encodeProto: (spec) => wire.staticPodSpec.encode({ pod: toStruct(asObject(spec)) }),
  });
  registry.register({
    type: STATIC_POD_STATUS_TYPE,
    displayType: 'StaticPodStatus',
    defaultNamespace: K8S_NAMESPACE,
    aliases: ['podstatus'],
    printColumns: [{ name: 'Ready', jsonPath: '{.conditions[?(@.type=="Ready")].status}' }],
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
