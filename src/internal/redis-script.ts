// A Lua script run by its SHA-1 (EVALSHA), loaded with EVAL the first time a Redis has not seen it (or after a restart).
import { createHash } from 'node:crypto';

/** The part of an ioredis client a script needs. */
export interface RedisScriptClient {
  evalsha(sha: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  eval(script: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
}

export class RedisScript {
  private readonly sha: string;

  constructor(private readonly text: string) {
    this.sha = createHash('sha1').update(text).digest('hex');
  }

  async run(client: RedisScriptClient, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!/NOSCRIPT/.test((error as Error)?.message ?? '')) throw error;
      return client.eval(this.text, keys.length, ...keys, ...args);
    }
  }
}
