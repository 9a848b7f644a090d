// The public surface of the cosi-pods client library. test/surface.test.ts holds it to a snapshot: a change to
// these names or to the declarations they reach fails until the snapshot is updated on purpose.
//
// The declarations speak Node's types (Buffer chunks of a log, AbortSignal, Symbol.asyncDispose), as the library
// runs on Node only. The reference below is kept in index.d.ts (preserve), so a project that imports the package
// gets them from the @types/node the package depends on, without installing it or listing it in "types" (which
// TypeScript 6 and later no longer fill in by default).
/// <reference types="node" preserve="true" />
export { connect, connectContext, FLOW_CONTROL_WINDOW } from './client.js';
export type {
  ApplyConfigurationOptions,
  ApplyConfigurationResult,
  ApplyMode,
  CallOptions,
  ClientLogger,
  ClientOptions,
  ConnectionState,
  ConnectOptions,
  CosiClient,
  LabelOperator,
  LabelQuery,
  LabelTerm,
  ListOptions,
  LogsOptions,
  ReadOptions,
  ReconnectOptions,
  Timers,
  WatchOptions,
  WatchStream,
} from './client.js';
export { defaultCosiConfigPath, loadCosiConfig, selectContext } from './cosiconfig.js';
export type { CosiConfig, CosiContext } from './cosiconfig.js';
export type { ContainerInfo, CosiResource, Json, Metadata, Phase, ResourceDefinition, WatchEvent, WatchEventType } from './resource.js';
export { getNodes, listNodes, watchNodes } from './nodes.js';
export type { NodeResult, NodeTarget, NodeWatchEvent } from './nodes.js';
export { createInformer } from './informer.js';
export type {
  Informer,
  InformerChange,
  InformerErrorEvent,
  InformerHandlers,
  InformerItem,
  InformerNodeStatus,
  InformerOptions,
  InformerStateEvent,
  InformerUpdate,
  SyncedOptions,
} from './informer.js';
export { CosiError, isCosiError, StatusCode } from '../shared/errors.js';
export type { ErrorKind } from '../shared/errors.js';
