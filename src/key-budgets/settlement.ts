// One request's usage, settled exactly once: charged from the upstream's bytes when the request was sent, refunded
// when it never was. The budgets' node:http/Express/Fastify adapters and the reference gateway share it.
import type { BudgetDecision, BudgetReservation } from './index.js';
import { type TokenUsage, UsageMeter, type UsageMeterOptions } from './usage.js';

export interface BudgetSettlementOptions {
  /** Whose budget. */
  key: string;
  /**
   * The admission's decision: its reservation is settled to the actual usage, or refunded with the request when it
   * never went upstream. Undefined: nothing was admitted (a key without limits): usage is reported, not charged.
   */
  decision?: BudgetDecision | undefined;
  /** Called once with the usage settled (never for a refund): record it, count it. */
  onUsage?: ((usage: TokenUsage, meter: UsageMeter | undefined) => void) | undefined;
}

/** The store side a settlement needs: the budgets' own settle and refund. */
export interface SettlementTarget {
  settle(reservation: BudgetReservation | undefined, key: string, tokens: number): Promise<void>;
  refund(key: string, reservation?: BudgetReservation): Promise<void>;
}

/** What one request used, settled once whichever way it ends (its last byte, the client leaving, an upstream failure). */
export interface BudgetSettlement {
  /** Marks the request sent upstream: from here on it costs the model server, and is charged rather than refunded. */
  sent(): void;
  readonly wasSent: boolean;
  /** The meter for a 2xx JSON or SSE answer's bytes (made once; the same one on later calls). */
  meter(options: UsageMeterOptions): UsageMeter;
  /** The meter made, if any. */
  readonly usageMeter: UsageMeter | undefined;
  /**
   * Settles, once: a request never sent is refunded (its reservation too); a sent one is charged what its meter read,
   * or what `fallback` says when no meter read an answer (a request cut before its answer came), or nothing.
   * Resolves when the store has it; never rejects (usage comes from upstream bytes: a store error is not the caller's).
   * Later calls return undefined.
   */
  settle(fallback?: () => TokenUsage | undefined): Promise<void> | undefined;
  readonly settled: boolean;
}

const NONE: TokenUsage = { promptTokens: 0, completionTokens: 0, source: 'counted' };
const ignore = () => {};

export class Settlement implements BudgetSettlement {
  wasSent = false;
  settled = false;
  usageMeter: UsageMeter | undefined = undefined;
  private readonly key: string;
  private readonly charged: boolean;
  private readonly reservation: BudgetReservation | undefined;
  private readonly onUsage: BudgetSettlementOptions['onUsage'];

  constructor(
    private readonly target: SettlementTarget,
    options: BudgetSettlementOptions,
  ) {
    this.key = options.key;
    const decision = options.decision;
    // Only an admitted decision was counted: a refused one (or none) has nothing to settle in the store.
    this.charged = decision?.allowed === true;
    this.reservation = decision?.reservation;
    this.onUsage = options.onUsage;
  }

  sent(): void {
    this.wasSent = true;
  }

  meter(options: UsageMeterOptions): UsageMeter {
    this.usageMeter ??= new UsageMeter(options);
    return this.usageMeter;
  }

  settle(fallback?: () => TokenUsage | undefined): Promise<void> | undefined {
    if (this.settled) return undefined;
    this.settled = true;
    if (!this.wasSent) {
      return this.charged ? this.target.refund(this.key, this.reservation).catch(ignore) : undefined;
    }
    const meter = this.usageMeter;
    const usage = meter !== undefined ? meter.usage() : (fallback?.() ?? NONE);
    this.onUsage?.(usage, meter);
    if (!this.charged) return undefined;
    return this.target
      .settle(this.reservation, this.key, usage.promptTokens + usage.completionTokens)
      .catch(ignore);
  }
}
