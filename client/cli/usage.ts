// cosictl's help: the global help and each command's own, and the error a command's misuse raises (exit code 2).

/** A command used wrongly: printed as one line and a pointer to the command's help; exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';

  /** `command`: the help to point to ("get", "gen pki"); none for the global help. */
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
  }
}

const GLOBAL_FLAGS = `Global flags:
  --cosiconfig FILE   client config (default: $COSICONFIG, else ~/.cosi/config)
  --context NAME      context of the client config to use (default: its current context)
  -e, --endpoints A,B endpoints to dial (default: the context's endpoints)
  -n, --nodes A,B     nodes to ask (default: the context's nodes, else the first endpoint); each is dialled at its
                      own address, at the port of the first endpoint unless it names one; fills the NODE column
  --request-timeout D how long each call that answers may take before it fails (get, containers, apply-config,
                      a watch's first look-up; not a watch, a log or wait's waiting): a duration such as 10s or
                      1m (default 30s; 0: no limit)
  -h, --help          help for the command
`;

const GLOBAL = `cosictl: COSI resources, containers and logs of cosid nodes, over mutual TLS (talosctl-like).

Usage:
  cosictl [global flags] <command> [flags]

Commands:
  get          print resources: one, a list, or a watch (-w)
  apply-config apply a machine config from a file (with local patches) to each node
  patch        patch each node's machine config (strategic merge or RFC 6902) and apply it
  edit         edit each node's machine config in an editor and apply it
  containers   the Kubernetes pods' sandboxes and containers of the node's container runtime (-k)
  logs         a container's log (-k <id>) or the kubelet's (logs kubelet)
  wait         wait until resources meet a condition, as kubectl wait
  gen          generate a PKI (gen pki) or a client certificate from an existing CA (gen cert)

${GLOBAL_FLAGS}  --version          print cosictl's version

Exit codes: 0 success, 1 failure (the error is on stderr), 2 usage error.
Run 'cosictl <command> --help' for a command's flags.
`;

const GET = `cosictl get: print one resource, every resource of a type, or watch them.

Usage:
  cosictl [global flags] get <type> [<id>] [--namespace NS] [-o table|yaml|json|jsonpath=EXPR] [--json-array] [-w]

Arguments:
  <type>              a type name or any alias, case-insensitive ("staticpods", "sp", "rd", ...);
                      cosictl get rd lists the types with their aliases
  <id>                one resource (default: every resource of the type in the namespace)

Flags:
  --namespace NS      namespace (default: the type's default namespace)
  -o, --output FMT    table (default), yaml, json or jsonpath=EXPR (kubectl syntax, e.g. '{.spec.metadata.name}')
  --json-array        with -o json: print one JSON array instead of a sequence of objects
  -w, --watch         print the current resources, then every change ('+' created, '-' destroyed) until Ctrl-C

${GLOBAL_FLAGS}`;

const APPLY_FLAGS = `  -m, --mode MODE     how the change is applied (default: auto):
                        auto, no-reboot   apply it now and save it (auto answers as no-reboot)
                        try               apply it now without saving; it is reverted after --timeout unless a
                                          later apply (not try) confirms it
                        staged            save it without applying it (applied when cosid next starts)
  --timeout D         with --mode try: how long before the change is reverted (Go duration: 1m, 30s, 1m30s;
                      default: the node's, 1m)
  --dry-run           change nothing: print what would happen and a diff of the config (stderr)
`;

const APPLY_CONFIG = `cosictl apply-config: replace each node's machine config with a local file, as talosctl apply-config.

The patches (-p) are applied locally to the file before it is sent; the nodes' configs are not read first, so the
file replaces whatever runs. The node's warnings print to stderr as "WARNING: ...", then what it did.

Usage:
  cosictl [global flags] apply-config -f FILE [-p PATCH]... [--mode auto|no-reboot|try|staged] [--timeout 1m]
        [--dry-run]

Flags:
  -f, --file FILE     required: the whole machine config (YAML)
  -p, --config-patch PATCH
                      a patch applied to the file first, repeatable: @file, or the patch itself (see
                      cosictl patch --help for the forms)
${APPLY_FLAGS}
${GLOBAL_FLAGS}`;

const PATCH = `cosictl patch: change each node's machine config with a patch, as talosctl patch machineconfig.

For each node: reads MachineConfig v1alpha1 (the running config and its version), applies the patches locally and
sends the result with the version it read: a change made on the node in between is refused (exit code 1), never
overwritten. Prints "patched MachineConfigs.config.talos.dev/v1alpha1 at the node N", or "Apply was skipped: no
changes detected." when the patches change nothing (the node is then not called). Needs os:admin.

Usage:
  cosictl [global flags] patch machineconfig -p PATCH... [--patch-file FILE] [--mode MODE] [--timeout 1m]
        [--dry-run]

Patches (-p @file reads a file; -p '<text>' is the patch itself):
  strategic merge     a partial config document, merged into the document it names (v1alpha1 when it has no kind,
                      else apiVersion/kind/name; other documents are added): mappings are merged, lists appended,
                      values replaced. "$patch: delete" removes a key (key: {$patch: delete}), a list item
                      (- name: x + $patch: delete; "- metadata: {name: web}" + $patch: delete removes the pod web)
                      or a whole document
  RFC 6902            a JSON array of operations ('[{"op": "replace", "path": "/machine/type", "value": "worker"}]')
                      or the same list in YAML; refused on a multi-document config

Flags:
  -p, --patch PATCH   repeatable; applied in order
  --patch-file FILE   one more patch, from FILE
${APPLY_FLAGS}
${GLOBAL_FLAGS}`;

const EDIT = `cosictl edit: edit each node's machine config in an editor, as talosctl edit machineconfig.

Opens $COSI_EDITOR, else $EDITOR, else vi (run through sh, so "code --wait" works) on the running config under a
"#" header, and applies what is saved with the version it read (a change made on the node meanwhile is refused).
An empty file or an unchanged one skips the apply. A config the node refuses reopens the editor with the error as
"#" lines on top; saving it unchanged then cancels (exit code 1, a copy of the changes is kept). Needs os:admin.

Usage:
  cosictl [global flags] edit machineconfig [--mode MODE] [--timeout 1m] [--dry-run]

Flags:
${APPLY_FLAGS}
${GLOBAL_FLAGS}`;

const CONTAINERS = `cosictl containers: the Kubernetes pods' sandboxes and containers, from each node's container runtime.

Usage:
  cosictl [global flags] containers -k [-o wide]

Flags:
  -k, --kubernetes    required: cosid serves the Kubernetes containers only; each container is listed under its
                      sandbox
  -o wide             add a RESTARTS column

${GLOBAL_FLAGS}`;

const LOGS = `cosictl logs: a container's log, or the kubelet's, each line prefixed with its node.

Usage:
  cosictl [global flags] logs -k <id> [-f] [--tail N]
  cosictl [global flags] logs kubelet [-f] [--tail N]

Flags:
  -k, --kubernetes    <id> is a container ID as containers -k lists it (<namespace>/<pod>:<container>:<id>), or
                      <namespace>/<pod>:<container> for its latest instance; without -k the only ID is kubelet
  -f, --follow        keep printing new lines until Ctrl-C
  --tail N            start N lines from the end (default: the whole log)

${GLOBAL_FLAGS}`;

const WAIT = `cosictl wait: until a condition holds, as kubectl wait.

Usage:
  cosictl [global flags] wait <type> [<id>] --for condition=NAME[=VALUE]|delete|jsonpath='{EXPR}'[=VALUE]
        [--timeout 30s] [--namespace NS]
  cosictl [global flags] wait <type> <id> --for create [--timeout 30s] [--namespace NS]

Arguments:
  <type> [<id>]       the resource, or without <id> every resource of the type that exists once each node has
                      listed them; on every node (-n). Prints "<type>/<id> condition met" for each as it meets it

Flags:
  --for condition=Ready       its spec's condition (.conditions, else .status.conditions) has status True
                              (condition=Ready=False for another value; names and values case-insensitive)
  --for create                until the named resource exists (a pod's status exists only once the kubelet has
                              reported it: wait --for create, then --for condition=Ready)
  --for delete                until it is gone (at once if it does not exist)
  --for jsonpath='{.spec.phase}'=Running   the JSONPath (on what get -o jsonpath sees) gives VALUE
  --timeout D         give up after D (30s, 2m, 1h; default 30s; 0: check once; negative: a week): exit code 1,
                      naming what is not met
  --namespace NS      namespace (default: the type's default namespace)

A named resource that does not exist once its node has listed: --for create waits for it; --for delete succeeds
at once; --for condition= and --for jsonpath= fail at once with "<type>/<id> not found" (exit code 1), without
waiting (kubectl's behaviour: wait --for create first).

${GLOBAL_FLAGS}`;

const GEN = `cosictl gen: certificates for cosid and its clients.

Usage:
  cosictl gen pki --out DIR [--san HOST]... [--endpoint HOST:PORT] [--force]
  cosictl gen cert --ca-dir DIR --name NAME [--roles ROLE,...] [--ttl 365d] [--out DIR] [--endpoint HOST:PORT]
        [--cosiconfig FILE]

Commands:
  pki                 a new CA, a server certificate, admin and reader client certificates and a client config
  cert                a client certificate from an existing CA, added to a client config as a context

Run 'cosictl gen pki --help' or 'cosictl gen cert --help' for their flags.
`;

const GEN_PKI = `cosictl gen pki: a new PKI for cosid and its clients.

Writes into DIR: ca.crt and ca.key (a new ECDSA P-256 CA), server.crt and server.key (for cosid's --pki),
admin.crt/.key (role os:admin), reader.crt/.key (role os:reader), and cosiconfig, a client config with the
contexts admin (current) and reader. Keys are written mode 0600.

Usage:
  cosictl gen pki --out DIR [--san HOST]... [--endpoint HOST:PORT] [--force]

Flags:
  --out DIR           required: the folder to write into (created when missing)
  --san HOST          another name or IP address for the server certificate, besides 127.0.0.1 and localhost;
                      repeat it or separate with commas (the names clients dial cosid by)
  --endpoint H:P      the endpoint the cosiconfig's contexts dial (default: 127.0.0.1:50000)
  --force             replace the PKI already in DIR (default: refuse when DIR holds a ca.key)
  -h, --help          this help
`;

const GEN_CERT = `cosictl gen cert: a client certificate from an existing CA, as talosctl config new does.

Writes NAME.crt and NAME.key into --out, and adds the context NAME (not made current) to a client config:
  - --cosiconfig FILE: that file (created when missing);
  - else $COSICONFIG, else ~/.cosi/config, when that file exists;
  - else a new config, <out>/NAME.cosiconfig, holding only that context (pass it with --cosiconfig).
It says on stderr which files it wrote or changed.

Usage:
  cosictl gen cert --ca-dir DIR --name NAME [--roles ROLE,...] [--ttl 365d] [--out DIR] [--endpoint HOST:PORT]
        [--cosiconfig FILE]

Flags:
  --ca-dir DIR        required: the folder with ca.crt and ca.key (as gen pki wrote them)
  --name NAME         required: lower-case letters, digits and -; the certificate's CN, its file names and the
                      context's name
  --roles ROLE,...    os:admin, os:operator or os:reader, the certificate's O= values (default: os:reader); or
                      os:impersonator alone: cosid's certificate for proxying calls to other nodes (no context added)
  --ttl D             how long it is valid: 30d, 12h or 90m (default: 365d; at most 10 years)
  --out DIR           where to write NAME.crt and NAME.key (default: --ca-dir; created when missing)
  --endpoint H:P      the endpoint of the new context (default: the endpoints of the config's current context, else
                      those of <ca-dir>/cosiconfig, else 127.0.0.1:50000)
  --cosiconfig FILE   the client config to add the context to (see above)
  -h, --help          this help
`;

const HELP: Readonly<Record<string, string>> = {
  get: GET,
  'apply-config': APPLY_CONFIG,
  patch: PATCH,
  edit: EDIT,
  containers: CONTAINERS,
  logs: LOGS,
  wait: WAIT,
  gen: GEN,
  'gen pki': GEN_PKI,
  'gen cert': GEN_CERT,
};

/** A command's help ("get", "gen pki"), else the global help. */
export function helpFor(command: string | undefined): string {
  return (command !== undefined ? HELP[command] : undefined) ?? GLOBAL;
}

/** Whether `command` has help of its own. */
export function hasHelp(command: string): boolean {
  return HELP[command] !== undefined;
}
