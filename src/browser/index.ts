/// <reference lib="dom" />
// vllm-kit/browser: remembers, for a few minutes, that the backend accepted the user's token, so route changes don't
// re-verify it on every navigation. Dependency-free and free of Node built-ins. A user-experience optimisation only:
// the server still checks the token on every request.
import { invalid } from '../internal/validate.js';

export interface BrowserTokenCacheOptions<P> {
  /** Asks the backend, e.g. `GET /auth/verify` with the token: the principal when valid, `null` when not; throws when it cannot tell. */
  verify: (token: string) => Promise<P | null>;
  /** How long a positive answer is reused, ms. @default 300000 (5 min) */
  ttlMs?: number;
  /** Where the answer is kept. Falls back to memory when unavailable (private mode, quota, disabled). @default localStorage */
  storage?: Storage | null;
  /** The storage key. @default 'vllm-kit:auth' */
  key?: string;
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

export interface BrowserTokenCache<P> {
  /** The principal for `token` — from the cache when it was verified less than `ttlMs` ago, else from `verify`. */
  check(token: string | null | undefined): Promise<P | null>;
  /** Forgets the cached answer here and in every other tab of this origin (logout). */
  invalidate(): void;
  /** Called when another tab invalidates (logs out). Returns the unsubscribe function. */
  onInvalidate(listener: () => void): () => void;
  /** `'storage'` or `'memory'` (when storage is unavailable). */
  readonly backend: 'storage' | 'memory';
  /** Stops listening to other tabs. */
  close(): void;
}

interface Entry<P> {
  /** SHA-256 of the token, hex. The token itself is never stored. */
  h: string;
  /** Expiry, epoch ms. */
  e: number;
  /** The verified principal. */
  p: P;
}

/** localStorage, if this browser lets us use it (private modes and disabled storage throw or refuse writes). */
function usableStorage(storage: Storage | null | undefined): Storage | undefined {
  try {
    const candidate = storage === undefined ? globalThis.localStorage : storage;
    if (candidate === null || candidate === undefined) return undefined;
    const probe = '__vllm-kit-probe__';
    candidate.setItem(probe, '1');
    candidate.removeItem(probe);
    return candidate;
  } catch {
    return undefined;
  }
}

async function sha256(text: string): Promise<string | undefined> {
  const subtle = globalThis.crypto?.subtle;
  // Web Crypto exists only in secure contexts (https, localhost): without it nothing is cached.
  if (subtle === undefined) return undefined;
  const digest = await subtle.digest('SHA-256', new TextEncoder().encode(text));
  let hex = '';
  for (const byte of new Uint8Array(digest)) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

/**
 * Creates a browser-side cache of the backend's "this token is valid" answer.
 *
 * @example
 * const auth = createBrowserTokenCache({
 *   verify: async (token) => {
 *     const res = await fetch('/auth/verify', { headers: { authorization: `Bearer ${token}` } });
 *     if (res.status === 401) return null;
 *     if (!res.ok) throw new Error(`verify failed: ${res.status}`);
 *     return res.json();
 *   },
 * });
 * const user = await auth.check(localStorage.getItem('token'));
 */
export function createBrowserTokenCache<P>(options: BrowserTokenCacheOptions<P>): BrowserTokenCache<P> {
  if (typeof options !== 'object' || options === null) throw invalid('options', 'an object', options);
  const { verify } = options;
  if (typeof verify !== 'function')
    throw invalid('verify', 'a function (token) => Promise<principal | null>', verify);
  const ttlMs = options.ttlMs ?? 300_000;
  if (typeof ttlMs !== 'number' || !(ttlMs > 0) || !Number.isFinite(ttlMs))
    throw invalid('ttlMs', 'a number > 0', ttlMs);
  const key = options.key ?? 'vllm-kit:auth';
  if (typeof key !== 'string' || key === '') throw invalid('key', 'a non-empty string', key);
  const now = options.now ?? Date.now;
  if (typeof now !== 'function') throw invalid('now', 'a function', now);

  const storage = usableStorage(options.storage);
  let memory: Entry<P> | undefined;
  const inFlight = new Map<string, Promise<P | null>>();
  const listeners = new Set<() => void>();

  const read = (): Entry<P> | undefined => {
    if (storage === undefined) return memory;
    try {
      const raw = storage.getItem(key);
      return raw === null ? undefined : (JSON.parse(raw) as Entry<P>);
    } catch {
      return memory;
    }
  };
  const write = (entry: Entry<P>) => {
    memory = entry;
    try {
      storage?.setItem(key, JSON.stringify(entry));
    } catch {
      // Quota or a storage that stopped working: the memory copy serves this tab.
    }
  };
  const remove = () => {
    memory = undefined;
    try {
      storage?.removeItem(key);
    } catch {
      // Nothing to remove from a storage we cannot use.
    }
  };

  // Another tab logged out (or in as someone else): drop our copy and tell the app.
  const onStorage = (event: StorageEvent) => {
    if (event.key !== key && event.key !== null) return;
    if (event.newValue === null) {
      memory = undefined;
      for (const listener of listeners) listener();
    }
  };
  const target = globalThis as unknown as Partial<Pick<Window, 'addEventListener' | 'removeEventListener'>>;
  target.addEventListener?.('storage', onStorage);

  return {
    backend: storage === undefined ? 'memory' : 'storage',

    async check(token) {
      if (typeof token !== 'string' || token === '') return null;
      const hash = await sha256(token);
      if (hash === undefined) return verify(token);
      const entry = read();
      if (entry !== undefined && entry.h === hash && entry.e > now()) return entry.p;
      let pending = inFlight.get(hash);
      if (pending === undefined) {
        pending = (async () => {
          try {
            const principal = await verify(token);
            if (principal === null || principal === undefined) {
              if (read()?.h === hash) remove();
              return null;
            }
            write({ h: hash, e: now() + ttlMs, p: principal });
            return principal;
          } finally {
            inFlight.delete(hash);
          }
        })();
        inFlight.set(hash, pending);
      }
      return pending;
    },

    invalidate() {
      remove();
    },

    onInvalidate(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },

    close() {
      target.removeEventListener?.('storage', onStorage);
      listeners.clear();
    },
  };
}
