// API keys in SQLite (better-sqlite3) or PostgreSQL (pg): one schema, migrations applied at start, keys stored as
// SHA-256 hashes. A key is shown once, when it is created.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface ApiKey {
  id: string;
  name: string;
  /** The first characters of the key, to recognise it in lists. */
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
}

export interface KeyStore {
  create(name: string): Promise<{ key: string; record: ApiKey }>;
  list(): Promise<ApiKey[]>;
  /** Revokes by id or name; resolves with the revoked key (and its hash, to announce), or undefined. */
  revoke(idOrName: string): Promise<(ApiKey & { keyHash: string }) | undefined>;
  /** The active key with this SHA-256 hash, if any. */
  findActiveByHash(hash: string): Promise<ApiKey | undefined>;
  close(): Promise<void>;
}

export const hashKey = (key: string): string => createHash('sha256').update(key).digest('hex');

/** The Redis channel on which revocations reach every running gateway's token cache. */
export const REVOCATION_CHANNEL = 'vllm-kit:gateway:revocations';

// Version 1; later migrations append to this list.
const MIGRATIONS = [
  `CREATE TABLE IF NOT EXISTS api_keys (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     key_hash TEXT NOT NULL UNIQUE,
     prefix TEXT NOT NULL,
     created_at TEXT NOT NULL,
     revoked_at TEXT
   )`,
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
}
const toKey = (row: Row): ApiKey => ({
  id: row.id,
  name: row.name,
  prefix: row.prefix,
  createdAt: row.created_at,
  revokedAt: row.revoked_at,
});

async function sqlite(path: string): Promise<KeyStore> {
  const { default: Database } = await import('better-sqlite3');
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)');
  const applied = new Set(
    (db.prepare('SELECT version FROM schema_migrations').all() as { version: number }[]).map(
      (r) => r.version,
    ),
  );
  MIGRATIONS.forEach((sql, i) => {
    if (applied.has(i + 1)) return;
    db.transaction(() => {
      db.exec(sql);
      db.prepare('INSERT INTO schema_migrations (version) VALUES (?)').run(i + 1);
    })();
  });
  const find = db.prepare('SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL');
  return {
    async create(name) {
      const { key, id, prefix } = newKey();
      const createdAt = new Date().toISOString();
      try {
        db.prepare(
          'INSERT INTO api_keys (id, name, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)',
        ).run(id, name, hashKey(key), prefix, createdAt);
      } catch (error) {
        throw isNameTaken(error) ? new KeyNameTakenError(name) : error;
      }
      return { key, record: { id, name, prefix, createdAt, revokedAt: null } };
    },
    async list() {
      return (db.prepare('SELECT * FROM api_keys ORDER BY created_at').all() as Row[]).map(toKey);
    },
    async revoke(idOrName) {
      const row = db
        .prepare('SELECT * FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL')
        .get(idOrName, idOrName) as Row | undefined;
      if (row === undefined) return undefined;
      const revokedAt = new Date().toISOString();
      db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ?').run(revokedAt, row.id);
      return { ...toKey({ ...row, revoked_at: revokedAt }), keyHash: row.key_hash };
    },
    async findActiveByHash(hash) {
      const row = find.get(hash) as Row | undefined;
      return row === undefined ? undefined : toKey(row);
    },
    async close() {
      db.close();
    },
  };
}

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
  return {
    async create(name) {
      const { key, id, prefix } = newKey();
      const createdAt = new Date().toISOString();
      try {
        await pool.query(
          'INSERT INTO api_keys (id, name, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)',
          [id, name, hashKey(key), prefix, createdAt],
        );
      } catch (error) {
        throw isNameTaken(error) ? new KeyNameTakenError(name) : error;
      }
      return { key, record: { id, name, prefix, createdAt, revokedAt: null } };
    },
    async list() {
      return ((await pool.query('SELECT * FROM api_keys ORDER BY created_at')).rows as Row[]).map(toKey);
    },
    async revoke(idOrName) {
      const revokedAt = new Date().toISOString();
      const result = await pool.query(
        'UPDATE api_keys SET revoked_at = $2 WHERE (id = $1 OR name = $1) AND revoked_at IS NULL RETURNING *',
        [idOrName, revokedAt],
      );
      const row = result.rows[0] as Row | undefined;
      return row === undefined ? undefined : { ...toKey(row), keyHash: row.key_hash };
    },
    async findActiveByHash(hash) {
      const row = (
        await pool.query('SELECT * FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL', [hash])
      ).rows[0] as Row | undefined;
      return row === undefined ? undefined : toKey(row);
    },
    async close() {
      await pool.end();
    },
  };
}

/** Opens the store named by DATABASE_URL (`sqlite:PATH` or `postgres://…`) and applies pending migrations. */
export function openKeyStore(databaseUrl: string): Promise<KeyStore> {
  if (databaseUrl.startsWith('sqlite:')) return sqlite(databaseUrl.slice('sqlite:'.length) || ':memory:');
  return postgres(databaseUrl);
}
