// API keys in SQLite (better-sqlite3) or PostgreSQL (pg): one schema, one set of queries, migrations applied at
// start, keys stored as SHA-256 hashes (a key is shown once, when it is created). Each key carries optional limits
// (requests and tokens per minute) and its lifetime usage.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface KeyLimits {
  /** Requests per minute; null: unlimited. */
  rpm: number | null;
  /** Tokens (prompt + completion) per minute; null: unlimited. */
  tpm: number | null;
  /** Its requests' priority band when the upstream is busy: higher first, fair within a band. */
  priority: number;
}

export interface ApiKey extends KeyLimits {
  id: string;
  name: string;
  /** The first characters of the key, to recognise it in lists. */
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
}

/** One key's lifetime usage, as `keys usage` prints it. */
export interface KeyUsage {
  name: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
}

/** Usage to add to one key (a batch holds each key once). */
export interface UsageDelta {
  keyId: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
}

export interface KeyStore {
  create(name: string, limits?: Partial<KeyLimits>): Promise<{ key: string; record: ApiKey }>;
  list(): Promise<ApiKey[]>;
  /** Revokes by id or name; resolves with the revoked key (and its hash, to announce), or undefined. */
  revoke(idOrName: string): Promise<(ApiKey & { keyHash: string }) | undefined>;
  /** Changes an active key's limits and priority (those given); resolves with the key and its hash, or undefined. */
  update(idOrName: string, limits: Partial<KeyLimits>): Promise<(ApiKey & { keyHash: string }) | undefined>;
  /** The active key with this SHA-256 hash, if any. */
  findActiveByHash(hash: string): Promise<ApiKey | undefined>;
  /** Adds a batch of usage in one transaction. */
  addUsage(batch: UsageDelta[]): Promise<void>;
  /** Lifetime usage of every key (or of the one with this id or name), oldest key first. */
  usage(idOrName?: string): Promise<KeyUsage[]>;
  close(): Promise<void>;
}

export const hashKey = (key: string): string => createHash('sha256').update(key).digest('hex');

/** The Redis channel on which revocations (and limit changes) reach every running gateway's token cache. */
export const REVOCATION_CHANNEL = 'vllm-kit:gateway:revocations';

// Applied in order, once each; later migrations append to this list. One statement each (both drivers run them).
const MIGRATIONS = [
  `CREATE TABLE IF NOT EXISTS api_keys (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     key_hash TEXT NOT NULL UNIQUE,
     prefix TEXT NOT NULL,
     created_at TEXT NOT NULL,
     revoked_at TEXT
   )`,
  'ALTER TABLE api_keys ADD COLUMN rpm BIGINT',
  'ALTER TABLE api_keys ADD COLUMN tpm BIGINT',
  `CREATE TABLE IF NOT EXISTS key_usage (
     key_id TEXT PRIMARY KEY REFERENCES api_keys (id),
     requests BIGINT NOT NULL DEFAULT 0,
     prompt_tokens BIGINT NOT NULL DEFAULT 0,
     completion_tokens BIGINT NOT NULL DEFAULT 0,
     updated_at TEXT NOT NULL
   )`,
  'ALTER TABLE api_keys ADD COLUMN priority INTEGER NOT NULL DEFAULT 0',
];

/** A key name already in use (names are unique, revoked keys' included). */
export class KeyNameTakenError extends Error {
  constructor(readonly keyName: string) {
    super(`a key named "${keyName}" already exists`);
    this.name = 'KeyNameTakenError';
  }
}

/** A unique-constraint violation on the name, from SQLite or PostgreSQL. */
function isNameTaken(error: unknown): boolean {
  const e = error as { code?: string; constraint?: string; message?: string };
  if (e?.code === 'SQLITE_CONSTRAINT_UNIQUE') return /api_keys\.name/.test(e.message ?? '');
  return e?.code === '23505' && (e.constraint ?? '').includes('name');
}

/** Every key the store makes: `vk-` and 32 random bytes in base64url. */
const KEY_FORMAT = /^vk-[A-Za-z0-9_-]{43}$/;

/** False for a string that cannot be one of our keys: refused without a lookup. */
export function isWellFormedKey(key: string): boolean {
  return KEY_FORMAT.test(key);
}

function newKey(): { key: string; id: string; prefix: string } {
  const key = `vk-${randomBytes(32).toString('base64url')}`;
  return { key, id: `key_${randomBytes(8).toString('hex')}`, prefix: key.slice(0, 10) };
}

interface Row {
  id: string;
  key_hash: string;
  name: string;
  prefix: string;
  created_at: string;
  revoked_at: string | null;
  rpm: number | string | null;
  tpm: number | string | null;
  priority: number | string | null;
}
/** PostgreSQL returns BIGINT as a string. */
const int = (value: number | string | null | undefined): number | null =>
  value === null || value === undefined ? null : Number(value);
const toKey = (row: Row): ApiKey => ({
  id: row.id,
  name: row.name,
  prefix: row.prefix,
  createdAt: row.created_at,
  revokedAt: row.revoked_at,
  rpm: int(row.rpm),
  tpm: int(row.tpm),
  priority: int(row.priority) ?? 0,
});

/** What the store needs of a database: queries with `?` placeholders, and several writes as one transaction. */
interface Sql {
  all(sql: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  transaction(statements: [sql: string, params: unknown[]][]): Promise<void>;
  close(): Promise<void>;
}

const USAGE_UPSERT = `INSERT INTO key_usage (key_id, requests, prompt_tokens, completion_tokens, updated_at)
  VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (key_id) DO UPDATE SET
    requests = key_usage.requests + excluded.requests,
    prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = key_usage.completion_tokens + excluded.completion_tokens,
    updated_at = excluded.updated_at`;

function keyStoreOn(db: Sql): KeyStore {
  const active = async (idOrName: string) =>
    (
      await db.all('SELECT * FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL', [
        idOrName,
        idOrName,
      ])
    )[0] as Row | undefined;
  return {
    async create(name, limits = {}) {
      const { key, id, prefix } = newKey();
      const createdAt = new Date().toISOString();
      const rpm = limits.rpm ?? null;
      const tpm = limits.tpm ?? null;
      const priority = limits.priority ?? 0;
      try {
        await db.transaction([
          [
            'INSERT INTO api_keys (id, name, key_hash, prefix, created_at, rpm, tpm, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
            [id, name, hashKey(key), prefix, createdAt, rpm, tpm, priority],
          ],
        ]);
      } catch (error) {
        throw isNameTaken(error) ? new KeyNameTakenError(name) : error;
      }
      return { key, record: { id, name, prefix, createdAt, revokedAt: null, rpm, tpm, priority } };
    },
    async list() {
      return ((await db.all('SELECT * FROM api_keys ORDER BY created_at')) as unknown as Row[]).map(toKey);
    },
    async revoke(idOrName) {
      const row = await active(idOrName);
      if (row === undefined) return undefined;
      const revokedAt = new Date().toISOString();
      await db.transaction([['UPDATE api_keys SET revoked_at = ? WHERE id = ?', [revokedAt, row.id]]]);
      return { ...toKey({ ...row, revoked_at: revokedAt }), keyHash: row.key_hash };
    },
    async update(idOrName, limits) {
      const row = await active(idOrName);
      if (row === undefined) return undefined;
      const rpm = limits.rpm === undefined ? int(row.rpm) : limits.rpm;
      const tpm = limits.tpm === undefined ? int(row.tpm) : limits.tpm;
      const priority = limits.priority ?? int(row.priority) ?? 0;
      await db.transaction([
        ['UPDATE api_keys SET rpm = ?, tpm = ?, priority = ? WHERE id = ?', [rpm, tpm, priority, row.id]],
      ]);
      return { ...toKey({ ...row, rpm, tpm, priority }), keyHash: row.key_hash };
    },
    async findActiveByHash(hash) {
      const row = (
        await db.all('SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL', [hash])
      )[0];
      return row === undefined ? undefined : toKey(row as unknown as Row);
    },
    async addUsage(batch) {
      if (batch.length === 0) return;
      const at = new Date().toISOString();
      await db.transaction(
        batch.map((u) => [USAGE_UPSERT, [u.keyId, u.requests, u.promptTokens, u.completionTokens, at]]),
      );
    },
    async usage(idOrName) {
      const where = idOrName === undefined ? '' : 'WHERE k.id = ? OR k.name = ?';
      const rows = await db.all(
        `SELECT k.name AS name, COALESCE(u.requests, 0) AS requests, COALESCE(u.prompt_tokens, 0) AS prompt,
           COALESCE(u.completion_tokens, 0) AS completion
         FROM api_keys k LEFT JOIN key_usage u ON u.key_id = k.id ${where} ORDER BY k.created_at`,
        idOrName === undefined ? [] : [idOrName, idOrName],
      );
      return rows.map((r) => ({
        name: String(r.name),
        requests: Number(r.requests),
        promptTokens: Number(r.prompt),
        completionTokens: Number(r.completion),
      }));
    },
    close: () => db.close(),
  };
}

async function sqlite(path: string): Promise<KeyStore> {
  const { default: Database } = await import('better-sqlite3');
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  // Several workers write usage to one file: wait for another's write lock rather than fail.
  db.pragma('busy_timeout = 5000');
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)');
  db.transaction(() => {
    const applied = new Set(
      (db.prepare('SELECT version FROM schema_migrations').all() as { version: number }[]).map(
        (r) => r.version,
      ),
    );
    MIGRATIONS.forEach((sql, i) => {
      if (applied.has(i + 1)) return;
      db.exec(sql);
      db.prepare('INSERT INTO schema_migrations (version) VALUES (?)').run(i + 1);
    });
  }).immediate();
  const statements = new Map<string, ReturnType<typeof db.prepare<unknown[]>>>();
  const prepared = (sql: string) => {
    let statement = statements.get(sql);
    if (statement === undefined) {
      statement = db.prepare<unknown[]>(sql);
      statements.set(sql, statement);
    }
    return statement;
  };
  return keyStoreOn({
    async all(sql, params = []) {
      return prepared(sql).all(...params) as Record<string, unknown>[];
    },
    async transaction(list) {
      db.transaction(() => {
        for (const [sql, params] of list) prepared(sql).run(...params);
      }).immediate();
    },
    async close() {
      db.close();
    },
  });
}

/** `?` placeholders as PostgreSQL's `$1, $2, …`. */
const numbered = (sql: string): string => {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
};

async function postgres(connectionString: string): Promise<KeyStore> {
  const { default: pg } = await import('pg');
  const pool = new pg.Pool({ connectionString, max: 5 });
  const client = await pool.connect();
  try {
    // One start-up at a time applies migrations (several workers may start together).
    await client.query('SELECT pg_advisory_lock(7261)');
    await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)');
    const applied = new Set(
      (await client.query('SELECT version FROM schema_migrations')).rows.map((r) => r.version as number),
    );
    for (let i = 0; i < MIGRATIONS.length; i++) {
      if (applied.has(i + 1)) continue;
      await client.query('BEGIN');
      await client.query(MIGRATIONS[i]!);
      await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [i + 1]);
      await client.query('COMMIT');
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock(7261)').catch(() => undefined);
    client.release();
  }
  return keyStoreOn({
    async all(sql, params = []) {
      return (await pool.query(numbered(sql), params)).rows;
    },
    async transaction(list) {
      const connection = await pool.connect();
      try {
        await connection.query('BEGIN');
        for (const [sql, params] of list) await connection.query(numbered(sql), params);
        await connection.query('COMMIT');
      } catch (error) {
        await connection.query('ROLLBACK').catch(() => undefined);
        throw error;
      } finally {
        connection.release();
      }
    },
    async close() {
      await pool.end();
    },
  });
}

/** Opens the store named by DATABASE_URL (`sqlite:PATH` or `postgres://…`) and applies pending migrations. */
export function openKeyStore(databaseUrl: string): Promise<KeyStore> {
  if (databaseUrl.startsWith('sqlite:')) return sqlite(databaseUrl.slice('sqlite:'.length) || ':memory:');
  return postgres(databaseUrl);
}
