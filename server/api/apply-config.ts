// machine.MachineService/ApplyConfiguration, as Talos answers it: os:admin only; AUTO is NO_REBOOT (Talos 1.14),
// REBOOT is refused (there is nothing to reboot); the config itself is checked and applied by the ConfigApplier
// (server/controllers/machine-config.ts). Ours on top: the request metadata `cosi-config-version` refuses a config
// made from a running config that has changed since.
import * as grpc from '@grpc/grpc-js';
import { CosiError, isCosiError } from '../../shared/errors.js';
import { namesForLog } from '../../shared/log.js';
import { CONFIG_VERSION_METADATA_KEY } from '../../shared/wire.js';
import { DEFAULT_TRY_TIMEOUT_MS, MAX_TRY_TIMEOUT_MS, goDuration, type ApplyMode, type ApplyResult, type ConfigApplier } from '../config/apply.js';
import type { Metrics } from '../metrics.js';
import { authorizeAdmin, peerOf } from './access.js';
import { requestOf, type MalformedRequest } from './requests.js';
import { toStatus, type CallRecorder } from './service.js';

/** The request as proto-loader decodes it (enums as names, longs as numbers). */
interface ApplyConfigurationRequest {
  data: Buffer;
  mode: string | number;
  dryRun: boolean;
  tryModeTimeout: { seconds: number; nanos: number } | null;
}

/** Where the handler finds the applier: set once the machine config is loaded (a plain Cosid has none). */
export interface ApplierRef {
  current: ConfigApplier | undefined;
}

export interface ApplyConfigDeps {
  applier: ApplierRef;
  nodeName: string;
  record: CallRecorder;
  metrics?: Metrics;
  /** Adds the `cosi-node` header to an error's status. */
  withNode(status: Partial<grpc.StatusObject>): Partial<grpc.StatusObject>;
  header: grpc.Metadata;
}

/** Talos's modes by request name: what cosid does, and the name its metrics and audit use. */
const MODES: Readonly<Record<string, { label: string; mode: ApplyMode | 'reboot' }>> = {
  REBOOT: { label: 'reboot', mode: 'reboot' },
  AUTO: { label: 'auto', mode: 'no-reboot' },
  NO_REBOOT: { label: 'no-reboot', mode: 'no-reboot' },
  STAGED: { label: 'staged', mode: 'staged' },
  TRY: { label: 'try', mode: 'try' },
};
/** How the answer names the mode that was applied (AUTO answers as NO_REBOOT, as Talos 1.14). */
const ANSWER_MODE: Readonly<Record<ApplyMode, string>> = { 'no-reboot': 'NO_REBOOT', staged: 'STAGED', try: 'TRY' };

export function applyConfigurationHandler(deps: ApplyConfigDeps): grpc.handleUnaryCall<ApplyConfigurationRequest | MalformedRequest, unknown> {
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  return (call, callback) => {
    const started = Date.now();
    const raw = call.request instanceof Object && 'mode' in call.request ? call.request : undefined;
    const modeName = typeof raw?.mode === 'string' ? raw.mode : '';
    const what: Record<string, unknown> = { mode: MODES[modeName]?.label ?? 'unknown', dryRun: raw?.dryRun === true };
    void (async () => {
      let result: ApplyResult | undefined;
      try {
        authorizeAdmin(peerOf(call), 'ApplyConfiguration');
        const req = requestOf(call);
        const known = MODES[modeName];
        if (known === undefined) throw new CosiError('invalid-argument', `unknown mode ${JSON.stringify(req.mode)}: use AUTO, NO_REBOOT, STAGED or TRY`);
        if (known.mode === 'reboot') throw new CosiError('unimplemented', 'the REBOOT mode is not supported, please use AUTO or NO_REBOOT');
        const mode = known.mode;
        let text: string;
        try {
          text = utf8.decode(req.data);
        } catch {
          throw new CosiError('invalid-argument', 'data is not UTF-8 text: the machine config is YAML');
        }
        const tryTimeoutMs = tryTimeoutOf(req.tryModeTimeout);
        const expectedVersion = expectedVersionOf(call.metadata);
        const applier = deps.applier.current;
        if (applier === undefined) throw new CosiError('unavailable', 'the machine config is not loaded yet; try again in a moment');
        result = await applier.apply({ text, mode, dryRun: req.dryRun, tryTimeoutMs, expectedVersion });
        what['added'] = namesForLog(result.pods.added);
        what['changed'] = namesForLog(result.pods.changed);
        what['removed'] = namesForLog(result.pods.removed);
        deps.metrics?.configApplied(String(what['mode']), req.dryRun ? 'dry-run' : 'applied');
        call.sendMetadata(deps.header);
        deps.record(call, 'ApplyConfiguration', what, started);
        callback(null, { messages: [{ metadata: { hostname: deps.nodeName }, warnings: [...result.warnings], mode: ANSWER_MODE[mode], modeDetails: result.details }] });
      } catch (err) {
        deps.metrics?.configApplied(String(what['mode']), isCosiError(err) ? err.kind : 'internal');
        deps.record(call, 'ApplyConfiguration', what, started, err);
        callback(deps.withNode(toStatus(err)));
      }
    })();
  };
}

/** try_mode_timeout: absent is Talos's 1 minute; it must be positive and at most MAX_TRY_TIMEOUT_MS. */
function tryTimeoutOf(d: { seconds: number; nanos: number } | null): number {
  if (d === null) return DEFAULT_TRY_TIMEOUT_MS;
  const ms = Math.round(Number(d.seconds) * 1000 + d.nanos / 1e6);
  if (!Number.isFinite(ms) || ms <= 0 || ms > MAX_TRY_TIMEOUT_MS) {
    throw new CosiError('invalid-argument', `try_mode_timeout must be more than 0 and at most ${goDuration(MAX_TRY_TIMEOUT_MS)} (got ${d.seconds}s ${d.nanos}ns)`);
  }
  return ms;
}

function expectedVersionOf(metadata: grpc.Metadata): number | undefined {
  const values = metadata.get(CONFIG_VERSION_METADATA_KEY);
  if (values.length === 0) return undefined;
  const [value] = values;
  if (values.length > 1 || typeof value !== 'string' || !/^[1-9]\d{0,15}$/.test(value)) {
    throw new CosiError('invalid-argument', `${CONFIG_VERSION_METADATA_KEY} must be one version number (the metadata.version of MachineConfig v1alpha1), not ${JSON.stringify(values.map(String))}`);
  }
  return Number(value);
}
