// The kubelet's side of the Container Runtime Interface: cosid's read-only reader (server/runtime/cri.ts) plus the
// calls that run and remove pod sandboxes and containers and reopen their logs. Only what simulates a node (the
// kubelet simulator) and what sets up pods for tests, the fuzzer and the bench use it; cosid never does.
import { CriReader, type ContainerMetadata, type PodSandboxMetadata } from '../../server/runtime/cri.js';

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

interface NamespaceOptions {
  network?: NamespaceMode;
  pid?: NamespaceMode;
  ipc?: NamespaceMode;
}

export interface PodSandboxConfig {
  metadata: PodSandboxMetadata;
  logDirectory: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: { cgroupParent?: string; securityContext?: { namespaceOptions?: NamespaceOptions } };
}

export interface ContainerConfig {
  metadata: ContainerMetadata;
  image: { image: string };
  command?: string[];
  args?: string[];
  workingDir?: string;
  envs?: { key: string; value: string }[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  logPath: string;
  linux?: { securityContext?: { namespaceOptions?: NamespaceOptions } };
}

/** Creating and removing things waits for the runtime (image unpacking, stop grace): a minute, not the reads' 10 s. */
const WRITE_TIMEOUT_MS = 60_000;

/** A CRI client that can change what runs: reads (inherited) and the kubelet's writes. */
export class CriClient extends CriReader {
  async runPodSandbox(config: PodSandboxConfig): Promise<string> {
    return (await this.call<{ podSandboxId: string }>('RunPodSandbox', { config }, WRITE_TIMEOUT_MS)).podSandboxId;
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.call('StopPodSandbox', { podSandboxId: id }, WRITE_TIMEOUT_MS);
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.call('RemovePodSandbox', { podSandboxId: id }, WRITE_TIMEOUT_MS);
  }

  async createContainer(podSandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    return (await this.call<{ containerId: string }>('CreateContainer', { podSandboxId, config, sandboxConfig }, WRITE_TIMEOUT_MS)).containerId;
  }

  async startContainer(id: string): Promise<void> {
    await this.call('StartContainer', { containerId: id }, WRITE_TIMEOUT_MS);
  }

  /** Stops a container, giving it `timeoutSeconds` to end before it is killed (and the call 30 s more). */
  async stopContainer(id: string, timeoutSeconds: number): Promise<void> {
    await this.call('StopContainer', { containerId: id, timeout: timeoutSeconds }, (timeoutSeconds + 30) * 1000);
  }

  async removeContainer(id: string): Promise<void> {
    await this.call('RemoveContainer', { containerId: id }, WRITE_TIMEOUT_MS);
  }

  /** Asks the runtime to reopen a container's log file (after the kubelet renamed it away). */
  async reopenContainerLog(id: string): Promise<void> {
    await this.call('ReopenContainerLog', { containerId: id });
  }
}
