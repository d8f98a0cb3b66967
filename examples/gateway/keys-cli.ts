// `npm run keys -- create --name NAME | list | revoke ID_OR_NAME`: manages the gateway's API keys. A new key is
// printed once, as the last line. With REDIS_URL set, a revocation reaches running gateways within a second.
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { loadConfig } from './config.js';
import { openKeyStore, REVOCATION_CHANNEL } from './key-store.js';

async function main(): Promise<number> {
  const { positionals, values } = parseArgs({
    args: process.argv.slice(2),
    options: { name: { type: 'string' } },
    allowPositionals: true,
  });
  const [command, target] = positionals;
  const config = loadConfig();
  const store = await openKeyStore(config.databaseUrl);
  try {
    if (command === 'create') {
      if (!values.name) throw new Error('usage: keys create --name NAME');
      const { key, record } = await store.create(values.name);
      process.stdout.write(
        `Created ${record.id} (${record.name}). The key is shown once; store it now:\n${key}\n`,
      );
      return 0;
    }
    if (command === 'list') {
      for (const k of await store.list()) {
        process.stdout.write(
          `${k.id}\t${k.name}\t${k.prefix}…\t${k.createdAt}\t${k.revokedAt ? `revoked ${k.revokedAt}` : 'active'}\n`,
        );
      }
      return 0;
    }
    if (command === 'revoke') {
      if (!target) throw new Error('usage: keys revoke ID_OR_NAME');
      const revoked = await store.revoke(target);
      if (!revoked) {
        process.stderr.write(`No active key with id or name "${target}"\n`);
        return 1;
      }
      process.stdout.write(`Revoked ${revoked.id} (${revoked.name})\n`);
      if (config.redisUrl) {
        // Running gateways' token caches subscribe to this channel and drop the key at once. The message is what
        // the cache keys by, SHA-256 in base64url: the stored hash, re-encoded (the key itself is never known here).
        const redis = new Redis(config.redisUrl);
        await redis.publish(REVOCATION_CHANNEL, Buffer.from(revoked.keyHash, 'hex').toString('base64url'));
        await redis.quit();
      }
      return 0;
    }
    process.stderr.write('usage: keys create --name NAME | list | revoke ID_OR_NAME\n');
    return 2;
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
