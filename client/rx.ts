// rxjs's Observable, loaded on the first watch rather than at import, and alone: the whole of rxjs is some 400
// files that take 70 ms and more to load, which a one-shot `cosictl get` or a `get -w` would pay before its first
// line. rxjs exports its internal modules (package.json "./internal/*"), and Node resolves them, as `rxjs` itself,
// to the CommonJS build for import and require alike: this is the very class an application's own
// `import { Observable } from 'rxjs'` gets.
import { createRequire } from 'node:module';
import type { Observable } from 'rxjs';

let loaded: typeof Observable | undefined;

export function observableClass(): typeof Observable {
  loaded ??= (createRequire(import.meta.url)('rxjs/internal/Observable') as { Observable: typeof Observable }).Observable;
  return loaded;
}
