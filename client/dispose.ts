// Symbol.asyncDispose (`await using`) arrived in Node 20.4 (and 18.18); on an older Node 20 it is defined here the
// way Node itself defined it before V8 had it, so that the library's [Symbol.asyncDispose] methods have a real key.
// Imported for its effect by every module that declares such a method.
const symbols = Symbol as unknown as { asyncDispose?: symbol };
if (typeof symbols.asyncDispose !== 'symbol') {
  Object.defineProperty(Symbol, 'asyncDispose', { value: Symbol.for('nodejs.asyncDispose'), configurable: false, enumerable: false, writable: false });
}

export {};
