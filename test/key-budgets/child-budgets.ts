// Key budgets in their own process on the shared Redis; the parent asks it to admit or charge over IPC.
import { Redis } from 'ioredis';
import { type BudgetLimits, createKeyBudgets } from '../../src/index.js';

const [redisUrl, name] = process.argv.slice(2) as [string, string];
const redis = new Redis(redisUrl);
await new Promise((ready) => redis.once('ready', ready));
const budgets = createKeyBudgets({ store: redis, name });
process.on(
  'message',
  async (message: {
    admit?: string;
    limits?: BudgetLimits;
    charge?: string;
    tokens?: number;
    close?: boolean;
  }) => {
    if (message.admit !== undefined) process.send?.(await budgets.admit(message.admit, message.limits ?? {}));
    if (message.charge !== undefined) {
      await budgets.charge(message.charge, message.tokens ?? 0);
      process.send?.({ charged: true });
    }
    if (message.close) {
      await budgets.close();
      await redis.quit();
      process.exit(0);
    }
  },
);
process.send?.({ ready: true });
