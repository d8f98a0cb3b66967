// `npm run keys -- <command>`: manages the gateway's API keys and shows their usage. A new key is printed once, as
// the last line. With REDIS_URL set, a revocation or a limit change reaches running gateways within a second (without
// it, within TOKEN_CACHE_TTL_SEC).
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { loadConfig } from './config.js';
import { type KeyLimits, type KeyStore, openKeyStore, REVOCATION_CHANNEL } from './key-store.js';

const USAGE = `usage: npm run keys -- <command>
  create --name NAME [--rpm N] [--tpm N] [--priority P] [--models A,B]
                                                           create a key (printed once, as the last line)
  update NAME [--rpm N|none] [--tpm N|none] [--priority P] [--models A,B|all]
                                                           change a key's limits, priority or models
  list                                                     every key, with its state, limits and priority
  revoke ID_OR_NAME                                        revoke a key
  usage [NAME] [--json]                                    lifetime requests and tokens per key
limits: --rpm requests per minute, --tpm tokens (prompt + completion) per minute; whole numbers >= 1 (none: unlimited)
priority: a whole number from -1000 to 1000 (default 0); when the model server is busy, higher goes first
models: the models the key may use, comma-separated (default: all); any other gets 404 model_not_found`;

/** A usage mistake: printed with the usage text, exit 2. */
class UsageError extends Error {}

/** `--rpm`/`--tpm`: a whole number >= 1, `none` (only when `noneAllowed`), or absent. */
function limit(flag: string, raw: string | undefined, noneAllowed: boolean): number | null | undefined {
  if (raw === undefined) return undefined;
  if (noneAllowed && raw === 'none') return null;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw))) {
    throw new UsageError(
      `--${flag} must be a whole number of at least 1${noneAllowed ? ' or "none"' : ''}, got "${raw}"`,
    );
  }
  return Number(raw);
}

/** `--priority`: a whole number from -1000 to 1000, or absent. */
function priorityOf(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!/^-?\d+$/.test(raw) || value < -1000 || value > 1000) {
    throw new UsageError(`--priority must be a whole number from -1000 to 1000, got "${raw}"`);
  }
  return value;
}

const shown = (value: number | null) => (value === null ? 'unlimited' : String(value));
const shownModels = (models: string[] | null) => (models === null ? 'all' : models.join(','));

/** `--models`: model ids, comma-separated; `all` (every model, when `allAllowed`); absent. */
function modelsOf(raw: string | undefined, allAllowed: boolean): string[] | null | undefined {
  if (raw === undefined) return undefined;
  if (raw === 'all' && allAllowed) return null;
  const models = raw.split(',').map((m) => m.trim());
  if (models.length === 0 || models.some((m) => !/^[A-Za-z0-9._:/@-]{1,256}$/.test(m))) {
    throw new UsageError(
      `--models must be model ids separated by commas${allAllowed ? ', or "all"' : ''}, got "${raw}"`,
    );
  }
  return models;
}

/** Tells running gateways to drop the key from their caches, so they read it (revoked, new limits) again. */
async function announce(redisUrl: string | undefined, keyHash: string): Promise<void> {
  if (!redisUrl) return;
  // The message is what the token cache keys by, SHA-256 in base64url: the stored hash, re-encoded (the key itself is
  // never known here).
  const redis = new Redis(redisUrl);
  await redis.publish(REVOCATION_CHANNEL, Buffer.from(keyHash, 'hex').toString('base64url'));
  await redis.quit();
}

async function run(store: KeyStore, command: string | undefined, target: string | undefined, values: Values) {
  const config = loadConfig();
  if (command === 'create') {
    if (!values.name) throw new UsageError('create needs --name NAME');
    const limits: Partial<KeyLimits> = {
      rpm: limit('rpm', values.rpm, false) ?? null,
      tpm: limit('tpm', values.tpm, false) ?? null,
      priority: priorityOf(values.priority) ?? 0,
      models: modelsOf(values.models, true) ?? null,
    };
    const { key, record } = await store.create(values.name, limits);
    process.stdout.write(
      `Created ${record.id} (${record.name}; rpm ${shown(record.rpm)}, tpm ${shown(record.tpm)}, priority ${record.priority}, models ${shownModels(record.models)}). ` +
        `The key is shown once; store it now:\n${key}\n`,
    );
    return 0;
  }
  if (command === 'update') {
    if (!target) throw new UsageError('update needs the key: update NAME --rpm N --tpm N');
    const limits: Partial<KeyLimits> = {};
    const rpm = limit('rpm', values.rpm, true);
    const tpm = limit('tpm', values.tpm, true);
    const priority = priorityOf(values.priority);
    const models = modelsOf(values.models, true);
    if (rpm !== undefined) limits.rpm = rpm;
    if (tpm !== undefined) limits.tpm = tpm;
    if (priority !== undefined) limits.priority = priority;
    if (models !== undefined) limits.models = models;
    if (rpm === undefined && tpm === undefined && priority === undefined && models === undefined) {
      throw new UsageError('update needs --rpm, --tpm, --priority or --models');
    }
    const updated = await store.update(target, limits);
    if (!updated) {
      process.stderr.write(`keys: no active key with id or name "${target}"\n`);
      return 1;
    }
    await announce(config.redisUrl, updated.keyHash);
    process.stdout.write(
      `Updated ${updated.id} (${updated.name}): rpm ${shown(updated.rpm)}, tpm ${shown(updated.tpm)}, priority ${updated.priority}, models ${shownModels(updated.models)}\n`,
    );
    return 0;
  }
  if (command === 'list') {
    for (const k of await store.list()) {
      const state = k.revokedAt ? `revoked ${k.revokedAt}` : 'active';
      process.stdout.write(
        `${k.id}\t${k.name}\t${k.prefix}…\t${k.createdAt}\t${state}\trpm ${shown(k.rpm)}\ttpm ${shown(k.tpm)}\tpriority ${k.priority}\tmodels ${shownModels(k.models)}\n`,
      );
    }
    return 0;
  }
  if (command === 'revoke') {
    if (!target) throw new UsageError('revoke needs the key: revoke ID_OR_NAME');
    const revoked = await store.revoke(target);
    if (!revoked) {
      process.stderr.write(`keys: no active key with id or name "${target}"\n`);
      return 1;
    }
    process.stdout.write(`Revoked ${revoked.id} (${revoked.name})\n`);
    await announce(config.redisUrl, revoked.keyHash);
    return 0;
  }
  if (command === 'usage') {
    const rows = await store.usage(target);
    if (target !== undefined && rows.length === 0) {
      process.stderr.write(`keys: no key with id or name "${target}"\n`);
      return 1;
    }
    if (values.json) {
      process.stdout.write(`${JSON.stringify(rows)}\n`);
      return 0;
    }
    process.stdout.write('name\trequests\tprompt_tokens\tcompletion_tokens\n');
    for (const u of rows) {
      process.stdout.write(`${u.name}\t${u.requests}\t${u.promptTokens}\t${u.completionTokens}\n`);
    }
    return 0;
  }
  throw new UsageError(command === undefined ? 'a command is needed' : `unknown command "${command}"`);
}

interface Values {
  name?: string | undefined;
  rpm?: string | undefined;
  tpm?: string | undefined;
  priority?: string | undefined;
  models?: string | undefined;
  json?: boolean | undefined;
  help?: boolean | undefined;
}

async function main(): Promise<number> {
  let parsed: { positionals: string[]; values: Values };
  try {
    // `--rpm -5` is a negative limit to refuse with our message, not a missing value to parseArgs.
    const args = process.argv.slice(2);
    for (let i = 0; i < args.length - 1; i++) {
      if (['--rpm', '--tpm', '--priority'].includes(args[i]!) && args[i + 1]!.startsWith('-')) {
        args.splice(i, 2, `${args[i]}=${args[i + 1]}`);
      }
    }
    parsed = parseArgs({
      args,
      options: {
        name: { type: 'string' },
        rpm: { type: 'string' },
        tpm: { type: 'string' },
        priority: { type: 'string' },
        models: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
    });
  } catch (error) {
    process.stderr.write(`keys: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { positionals, values } = parsed;
  if (values.help || positionals[0] === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const [command, target] = positionals;
  // Usage mistakes are caught before the store is opened.
  if (command === undefined || !['create', 'update', 'list', 'revoke', 'usage'].includes(command)) {
    process.stderr.write(
      `keys: ${command === undefined ? 'a command is needed' : `unknown command "${command}"`}\n${USAGE}\n`,
    );
    return 2;
  }
  const store = await openKeyStore(loadConfig().databaseUrl);
  try {
    return await run(store, command, target, values);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`keys: ${error.message}\n${USAGE}\n`);
      return 2;
    }
    throw error;
  } finally {
    await store.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`keys: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
