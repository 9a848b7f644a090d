// rxjs is loaded on the first watch rather than at import: it takes about 70 ms to load, which a one-shot
// `cosictl get` would otherwise pay for nothing. Node resolves `rxjs` to its CommonJS build for import and require
// alike, so this is the same module instance an application's own `import 'rxjs'` gets.
import { createRequire } from 'node:module';
import type * as Rx from 'rxjs';

let loaded: typeof Rx | undefined;

export function rxjs(): typeof Rx {
  loaded ??= createRequire(import.meta.url)('rxjs') as typeof Rx;
  return loaded;
}
