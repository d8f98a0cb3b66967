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
  /** The models it may use (ids or aliases); null: every model. */
  models: string[] | null;
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
  /**
   * Adds a batch of usage in one transaction, once: the batch's id is recorded with it, so a batch retried after a
   * commit whose answer was lost (the connection cut) is not added twice.
   */
  addUsage(batch: UsageDelta[], batchId: string): Promise<void>;
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
  // Usage batches already applied, by id (kept a day): a retried batch is applied once.
  'CREATE TABLE IF NOT EXISTS usage_batches (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)',
  // The models a key may use, comma-separated; NULL: every model.
  'ALTER TABLE api_keys ADD COLUMN models TEXT',
];

/** How long an applied batch's id is remembered (a retry comes within one outage of the database). */
const BATCH_ID_RETENTION_MS = 24 * 3600_000;
/** Old batch ids are pruned at most this often per process. */
const BATCH_PRUNE_INTERVAL_MS = 3600_000;

/** The key store cannot be reached (at start: the message names DATABASE_URL, its password hidden). */
export class KeyStoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeyStoreUnavailableError';
  }
}

/** DATABASE_URL as it may be shown: without its password. */
export function redactDatabaseUrl(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return databaseUrl.startsWith('sqlite:') ? databaseUrl : '(unparseable)';
  }
}

/** One line for a database error: its code and message, never the driver's internals (pg's keys and pids). */
export function describeDatabaseError(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown };
  const message = typeof e?.message === 'string' && e.message !== '' ? e.message : String(error);
  return typeof e?.code === 'string' && !message.includes(e.code) ? `${message} (${e.code})` : message;
}

export interface OpenKeyStoreOptions {
  /**
   * Apply pending migrations now (and so connect now, failing with {@link KeyStoreUnavailableError} naming
   * DATABASE_URL). False: connect on first use, so a process starts while the database is down. @default true
   */
  migrate?: boolean;
  /** PostgreSQL: the longest wait for a connection, and for a query's answer, ms. @default 5000 */
  connectTimeoutMs?: number;
  /** A fault of a pooled connection while idle (the database restarted): reported here, never thrown. */
  onError?: (error: Error) => void;
}

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
  models: string | null;
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
  models: row.models === null || row.models === undefined ? null : row.models.split(',').filter(Boolean),
});
const modelsText = (models: string[] | null | undefined): string | null =>
  models === null || models === undefined ? null : models.join(',');

/** What the store needs of a database: queries with `?` placeholders, and several writes as one transaction. */
interface Sql {
  all(sql: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  transaction(statements: [sql: string, params: unknown[]][], once?: OnceMarker): Promise<void>;
  close(): Promise<void>;
}

/** Makes a transaction apply once: it first inserts this row, and does nothing more when it was already there. */
interface OnceMarker {
  sql: string;
  params: unknown[];
}

const BATCH_MARK = 'INSERT INTO usage_batches (id, applied_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING';

const USAGE_UPSERT = `INSERT INTO key_usage (key_id, requests, prompt_tokens, completion_tokens, updated_at)
  VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (key_id) DO UPDATE SET
    requests = key_usage.requests + excluded.requests,
    prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = key_usage.completion_tokens + excluded.completion_tokens,
    updated_at = excluded.updated_at`;

/** The key store over one SQL database (SQLite or PostgreSQL: `Sql` hides which). */
class SqlKeyStore implements KeyStore {
  private lastPrune = 0;

  constructor(private readonly db: Sql) {}

  private async active(idOrName: string): Promise<Row | undefined> {
    const rows = await this.db.all(
      'SELECT * FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL',
      [idOrName, idOrName],
    );
    return rows[0] as Row | undefined;
  }

  async create(name: string, limits: Partial<KeyLimits> = {}): Promise<{ key: string; record: ApiKey }> {
    const { key, id, prefix } = newKey();
    const createdAt = new Date().toISOString();
    const rpm = limits.rpm ?? null;
    const tpm = limits.tpm ?? null;
    const priority = limits.priority ?? 0;
    const models = limits.models ?? null;
    try {
      await this.db.transaction([
        [
          'INSERT INTO api_keys (id, name, key_hash, prefix, created_at, rpm, tpm, priority, models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
          [id, name, hashKey(key), prefix, createdAt, rpm, tpm, priority, modelsText(models)],
        ],
      ]);
    } catch (error) {
      throw isNameTaken(error) ? new KeyNameTakenError(name) : error;
    }
    return { key, record: { id, name, prefix, createdAt, revokedAt: null, rpm, tpm, priority, models } };
  }

  async list(): Promise<ApiKey[]> {
    return ((await this.db.all('SELECT * FROM api_keys ORDER BY created_at')) as unknown as Row[]).map(toKey);
  }

  async revoke(idOrName: string): Promise<(ApiKey & { keyHash: string }) | undefined> {
    const row = await this.active(idOrName);
    if (row === undefined) return undefined;
    const revokedAt = new Date().toISOString();
    await this.db.transaction([['UPDATE api_keys SET revoked_at = ? WHERE id = ?', [revokedAt, row.id]]]);
    return { ...toKey({ ...row, revoked_at: revokedAt }), keyHash: row.key_hash };
  }

  async update(
    idOrName: string,
    limits: Partial<KeyLimits>,
  ): Promise<(ApiKey & { keyHash: string }) | undefined> {
    const row = await this.active(idOrName);
    if (row === undefined) return undefined;
    const rpm = limits.rpm === undefined ? int(row.rpm) : limits.rpm;
    const tpm = limits.tpm === undefined ? int(row.tpm) : limits.tpm;
    const priority = limits.priority ?? int(row.priority) ?? 0;
    const models = limits.models === undefined ? row.models : modelsText(limits.models);
    await this.db.transaction([
      [
        'UPDATE api_keys SET rpm = ?, tpm = ?, priority = ?, models = ? WHERE id = ?',
        [rpm, tpm, priority, models, row.id],
      ],
    ]);
    return { ...toKey({ ...row, rpm, tpm, priority, models }), keyHash: row.key_hash };
  }

  async findActiveByHash(hash: string): Promise<ApiKey | undefined> {
    const row = (
      await this.db.all('SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL', [hash])
    )[0];
    return row === undefined ? undefined : toKey(row as unknown as Row);
  }

  async addUsage(batch: UsageDelta[], batchId: string): Promise<void> {
    if (batch.length === 0) return;
    const now = Date.now();
    const at = new Date(now).toISOString();
    const statements: [string, unknown[]][] = batch.map((u) => [
      USAGE_UPSERT,
      [u.keyId, u.requests, u.promptTokens, u.completionTokens, at],
    ]);
    if (now - this.lastPrune >= BATCH_PRUNE_INTERVAL_MS) {
      statements.push([
        'DELETE FROM usage_batches WHERE applied_at < ?',
        [new Date(now - BATCH_ID_RETENTION_MS).toISOString()],
      ]);
    }
    await this.db.transaction(statements, { sql: BATCH_MARK, params: [batchId, at] });
    if (statements.length > batch.length) this.lastPrune = now;
  }

  async usage(idOrName?: string): Promise<KeyUsage[]> {
    const where = idOrName === undefined ? '' : 'WHERE k.id = ? OR k.name = ?';
    const rows = await this.db.all(
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
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

/**
 * How long a SQLite statement waits for another connection's lock. better-sqlite3 is synchronous: the wait blocks the
 * worker's event loop, so it is short; a lookup that still finds the file locked answers 503 (key_store_unavailable)
 * and a usage write is kept and retried.
 */
const SQLITE_BUSY_TIMEOUT_MS = 200;

async function sqlite(path: string): Promise<KeyStore> {
  const { default: Database } = await import('better-sqlite3');
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  // Workers starting together take turns applying migrations.
  db.pragma('busy_timeout = 5000');
  db.pragma('journal_mode = WAL');
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
  // Serving: several workers write usage to one file; wait a little for another's write lock rather than fail.
  db.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
  const statements = new Map<string, ReturnType<typeof db.prepare<unknown[]>>>();
  const prepared = (sql: string) => {
    let statement = statements.get(sql);
    if (statement === undefined) {
      statement = db.prepare<unknown[]>(sql);
      statements.set(sql, statement);
    }
    return statement;
  };
  return new SqlKeyStore({
    async all(sql, params = []) {
      return prepared(sql).all(...params) as Record<string, unknown>[];
    },
    async transaction(list, once) {
      db.transaction(() => {
        if (once !== undefined && prepared(once.sql).run(...once.params).changes === 0) return;
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

async function postgres(connectionString: string, options: OpenKeyStoreOptions): Promise<KeyStore> {
  const { default: pg } = await import('pg');
  const timeoutMs = options.connectTimeoutMs ?? 5000;
  const pool = new pg.Pool({
    connectionString,
    max: 5,
    // A database that never answers fails a connection attempt, and a query, within the timeout (not minutes).
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    keepAlive: true,
  });
  // An idle connection the server ended (a restart, a failover, pg_terminate_backend) is reported and dropped; the
  // pool opens a new one on the next query. Never unhandled: that would kill the process.
  pool.on('error', (error) => options.onError?.(error));
  if (options.migrate ?? true) await migratePostgres(pool, connectionString, timeoutMs);
  return new SqlKeyStore({
    async all(sql, params = []) {
      return (await pool.query(numbered(sql), params)).rows;
    },
    async transaction(list, once) {
      const connection = await pool.connect();
      let broken: Error | undefined;
      try {
        await connection.query('BEGIN');
        if (once !== undefined && (await connection.query(numbered(once.sql), once.params)).rowCount === 0) {
          await connection.query('ROLLBACK');
          return;
        }
        for (const [sql, params] of list) await connection.query(numbered(sql), params);
        await connection.query('COMMIT');
      } catch (error) {
        await connection.query('ROLLBACK').catch((rollback: Error) => {
          broken = rollback;
        });
        throw error;
      } finally {
        // A connection that could not even roll back is closed, not returned to the pool.
        connection.release(broken);
      }
    },
    async close() {
      await pool.end();
    },
  });
}

/** Applies PostgreSQL migrations, one process at a time; an unreachable database fails naming DATABASE_URL. */
async function migratePostgres(pool: import('pg').Pool, connectionString: string, timeoutMs: number) {
  let client: import('pg').PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    await pool.end().catch(() => undefined);
    const reason = /timeout/i.test(describeDatabaseError(error))
      ? `no answer within ${timeoutMs} ms`
      : describeDatabaseError(error);
    throw new KeyStoreUnavailableError(
      `DATABASE_URL (${redactDatabaseUrl(connectionString)}): cannot connect: ${reason}`,
      { cause: error },
    );
  }
  let failure: unknown;
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
    await client.query('SELECT pg_advisory_unlock(7261)');
  } catch (error) {
    failure = error;
  }
  // A connection that failed mid-way is closed (its session lock with it), not returned to the pool.
  client.release(failure === undefined ? undefined : (failure as Error));
  if (failure !== undefined) {
    await pool.end().catch(() => undefined);
    throw new KeyStoreUnavailableError(
      `DATABASE_URL (${redactDatabaseUrl(connectionString)}): migrations failed: ${describeDatabaseError(failure)}`,
      { cause: failure },
    );
  }
}

/**
 * Opens the store named by DATABASE_URL (`sqlite:PATH` or `postgres://…`) and, unless `migrate: false`, applies
 * pending migrations.
 */
export function openKeyStore(databaseUrl: string, options: OpenKeyStoreOptions = {}): Promise<KeyStore> {
  if (databaseUrl.startsWith('sqlite:')) return sqlite(databaseUrl.slice('sqlite:'.length) || ':memory:');
  return postgres(databaseUrl, options);
}
