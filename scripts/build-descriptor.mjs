#!/usr/bin/env node
// Build step: parses the COSI State API's .proto files once with protobufjs and writes the result as protobufjs's
// JSON descriptor (dist/cosi-descriptor.json). shared/wire.ts loads that at start instead of parsing the .proto text
// in every process (parsing costs about 50 ms, loading the JSON under 10: issue 22, cosictl's start-up).
//
//   node scripts/build-descriptor.mjs
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const protoDir = join(root, 'proto');
const out = join(root, 'dist', 'cosi-descriptor.json');

/** The files shared/wire.ts serves, with what they import. */
const FILES = [
  'cosi/resource/resource.proto',
  'cosi/resource/state.proto',
  'cosi/resource/meta/meta.proto',
  'talos/resource/definitions/k8s/k8s.proto',
  'talos/resource/definitions/config/config.proto',
  'machine/machine.proto',
];

const parsed = new protobuf.Root();
// google/protobuf/* come bundled with protobufjs; everything else lives in proto/.
parsed.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') || target.startsWith(protoDir) ? target : join(protoDir, target));
// keepCase false: field names in camelCase, as every reader of wire.ts expects.
parsed.loadSync(FILES, { keepCase: false });
parsed.resolveAll();

mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(parsed.toJSON()) + '\n');
