// The public surface of the cosi-pods client library.
export { connect, connectContext, CosiClient, FLOW_CONTROL_WINDOW } from './client.js';
export type { ConnectOptions, LabelOperator, LabelQuery, LabelTerm, ListOptions, ReadOptions, WatchOptions } from './client.js';
export { defaultCosiConfigPath, loadCosiConfig, selectContext } from './cosiconfig.js';
export type { CosiConfig, CosiContext } from './cosiconfig.js';
export type { CosiResource, ResourceDefinition, WatchEvent, WatchEventType } from './resource.js';
export type { ConnectionState, ReconnectOptions } from './watch.js';
export type { ContainerInfo, LogsOptions } from './machine.js';
export { getNodes, listNodes, watchNodes } from './nodes.js';
export type { NodeResult, NodeTarget, NodeWatchEvent } from './nodes.js';
export { CosiError, isCosiError } from '../shared/errors.js';
export type { ErrorKind } from '../shared/errors.js';
export type { Metadata } from '../shared/resource.js';
