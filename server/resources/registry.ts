// Resource definitions: registered once, stored as resources in namespace `meta` like the reference runtime.
import { CosiError } from '../../shared/errors.js';
import { wire, type Json } from '../../shared/wire.js';
import type { ResourceInput, ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';

export const META_NAMESPACE = 'meta';
export const NAMESPACE_TYPE = 'Namespaces.meta.cosi.dev';
export const DEFINITION_TYPE = 'ResourceDefinitions.meta.cosi.dev';
export const META_OWNER = 'cosi.meta';

export interface PrintColumn {
  readonly name: string;
  readonly jsonPath: string;
}

export interface DefinitionInput {
  /** `<CamelCasePlural>.<lower.dotted.suffix>`, e.g. StaticPods.kubernetes.talos.dev */
  readonly type: string;
  readonly displayType: string;
  readonly defaultNamespace: string;
  readonly aliases?: readonly string[];
  readonly printColumns?: readonly PrintColumn[];
  readonly sensitive?: boolean;
  /** Encodes a spec as the type's protobuf message (proto_spec); none means empty bytes. */
  readonly encodeProto?: (spec: Json) => Uint8Array;
}

export interface Definition extends Required<Omit<DefinitionInput, 'encodeProto' | 'sensitive'>> {
  readonly sensitive: boolean;
  /** Every name the type answers to, lower-case: the type itself and all aliases. */
  readonly names: readonly string[];
  readonly allAliases: readonly string[];
  readonly encodeProto: ((spec: Json) => Uint8Array) | undefined;
}

const TYPE_FORMAT = /^[A-Z][A-Za-z0-9]*\.[a-z0-9]+(\.[a-z0-9-]+)+$/;

/** Derives the aliases the reference runtime gives a type; `short` ones may be shared by several types. */
export function deriveAliases(type: string, displayType: string): { unique: string[]; short: string[] } {
  const dot = type.indexOf('.');
  const plural = type.slice(0, dot).toLowerCase();
  const suffix = type.slice(dot + 1).split('.');
  const unique = [displayType.toLowerCase(), plural];
  for (let i = 1; i < suffix.length; i++) unique.push(`${plural}.${suffix.slice(0, i).join('.')}`);
  const initials = displayType.replace(/[^A-Z]/g, '').toLowerCase();
  const short = initials.length > 1 ? [initials, `${initials}s`] : [];
  return { unique, short };
}

export class Registry {
  private readonly byType = new Map<string, Definition>();
  // Names only one type may have: type names, explicit aliases, singular and plural forms.
  private readonly claimed = new Map<string, string>();
  private readonly namespaces = new Set<string>();
  /** The meta resources' writes, in order; published() waits for them. */
  private writes: Promise<void> = Promise.resolve();
  private writeError: unknown;

  constructor(
    private readonly store: ResourceStore,
    private readonly warn: (msg: string, fields: Record<string, unknown>) => void = () => {},
  ) {
    this.registerNamespace(META_NAMESPACE, 'Metadata namespace which contains resource definitions and namespaces.');
    this.register({
      type: NAMESPACE_TYPE,
      displayType: 'Namespace',
      defaultNamespace: META_NAMESPACE,
      aliases: ['ns'],
      encodeProto: (spec) => wire.namespaceSpec.encode({ description: stringField(spec, 'description') }),
    });
    this.register({
      type: DEFINITION_TYPE,
      displayType: 'ResourceDefinition',
      defaultNamespace: META_NAMESPACE,
      aliases: ['api-resources'],
      printColumns: [{ name: 'Aliases', jsonPath: '{.aliases[:]}' }],
      encodeProto: (spec) => {
        const def = this.byType.get(stringField(spec, 'type'));
        if (def === undefined) return new Uint8Array();
        const { type, ...rest } = definitionFields(def);
        return wire.resourceDefinitionSpec.encode({ resourceType: type, ...rest });
      },
    });
  }

  registerNamespace(name: string, description: string): void {
    this.namespaces.add(name);
    this.publish({ namespace: META_NAMESPACE, type: NAMESPACE_TYPE, id: name, spec: { description } });
  }

  /** Resolves once every namespace and definition registered so far is in the store; throws the first write error. */
  async published(): Promise<void> {
    await this.writes;
    if (this.writeError !== undefined) throw this.writeError as Error;
  }

  /** Written in the background (a store may be remote); an existing one from an earlier run is updated in place. */
  private publish(input: ResourceInput): void {
    this.writes = this.writes
      .then(() => upsert(this.store, input, META_OWNER))
      .then(
        () => undefined,
        (err: unknown) => {
          this.writeError ??= err;
        },
      );
  }

  /** Registers a type; throws when the type or one of its unique aliases is already taken. */
  register(input: DefinitionInput): Definition {
    if (!TYPE_FORMAT.test(input.type)) {
      throw new CosiError('invalid-argument', `resource type ${JSON.stringify(input.type)} is not of the form <CamelCasePlural>.<lower.dotted.suffix>`);
    }
    const derived = deriveAliases(input.type, input.displayType);
    const explicit = (input.aliases ?? []).map((a) => a.toLowerCase());
    const unique = [...new Set([input.type.toLowerCase(), ...explicit, ...derived.unique])];
    for (const name of unique) {
      const owner = this.claimed.get(name);
      if (owner !== undefined) throw new CosiError('already-exists', `alias ${JSON.stringify(name)} of ${input.type} is already used by ${owner}`);
    }
    // A name another type claimed (its own name or an explicit alias, as Talos's mcs for MachineConfig) is not
    // shared: the derived short alias gives way instead of making that name ambiguous.
    const short = derived.short.filter((name) => !this.claimed.has(name) && !unique.includes(name));
    for (const name of short) {
      const clash = [...this.byType.values()].filter((d) => d.names.includes(name)).map((d) => d.type);
      if (clash.length > 0) this.warn('short alias is shared; it will be ambiguous', { alias: name, types: [input.type, ...clash] });
    }
    for (const name of unique) this.claimed.set(name, input.type);
    const aliases = [...new Set([...explicit, derived.unique[0] ?? '', ...short])].filter((a) => a !== '');
    const allAliases = [...new Set([...aliases, ...derived.unique])];
    const def: Definition = {
      type: input.type,
      displayType: input.displayType,
      defaultNamespace: input.defaultNamespace,
      aliases,
      allAliases,
      printColumns: input.printColumns ?? [],
      sensitive: input.sensitive ?? false,
      names: [input.type.toLowerCase(), ...allAliases],
      encodeProto: input.encodeProto,
    };
    this.byType.set(def.type, def);
    this.publish({ namespace: META_NAMESPACE, type: DEFINITION_TYPE, id: def.type.toLowerCase(), spec: definitionSpec(def) });
    return def;
  }

  lookup(type: string): Definition | undefined {
    return this.byType.get(type);
  }

  /** Every registered type. */
  definitions(): Definition[] {
    return [...this.byType.values()];
  }

  hasNamespace(name: string): boolean {
    return this.namespaces.has(name);
  }
}

/** The spec as stored and shown in YAML, with the reference runtime's field names. */
function definitionSpec(def: Definition): Json {
  return definitionFields(def);
}

function definitionFields(def: Definition) {
  return {
    type: def.type,
    displayType: def.displayType,
    defaultNamespace: def.defaultNamespace,
    aliases: [...def.aliases],
    allAliases: [...def.allAliases],
    printColumns: def.printColumns.map((c) => ({ name: c.name, jsonPath: c.jsonPath })),
    sensitivity: def.sensitive ? 1 : 0,
  };
}

function stringField(spec: Json, key: string): string {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) return '';
  const v = spec[key];
  return typeof v === 'string' ? v : '';
}
