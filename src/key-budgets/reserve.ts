// What one request may cost at most, read from its parsed body: the prompt (estimated), the tokens each choice may
// generate, and how many choices there are — prompts × `n` for a completion with a list of prompts.
import { estimatePromptTokens } from './usage.js';

export interface RequestCost {
  /** Prompts in the request: a completion's list of prompts (strings or token-id lists), else 1. */
  prompts: number;
  /** Choices per prompt (`n`). */
  n: number;
  /** Choices generated in all: prompts × n. */
  choices: number;
  /** The prompt tokens, estimated (see {@link estimatePromptTokens}). */
  promptTokens: number;
  /** Tokens each choice may generate (`max_completion_tokens`, else `max_tokens`); undefined when absent. */
  maxTokens: number | undefined;
  /**
   * The worst case: promptTokens + maxTokens × choices; for a request that generates nothing (embeddings), its prompt.
   * Undefined when a generating request gives no `max_tokens` (only the model's context bounds it).
   */
  worstCase: number | undefined;
}

const count = (value: unknown): number | undefined =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;

/** A completion's prompts: a list of strings, or a list of token-id lists, counts each; anything else is one. */
function promptsOf(prompt: unknown): number {
  if (!Array.isArray(prompt) || prompt.length === 0) return 1;
  // A flat list of token ids is one prompt.
  return typeof prompt[0] === 'number' ? 1 : prompt.length;
}

/**
 * The most a request may cost, for {@link KeyBudgets.admit}'s `reserveTokens` and for counting choices in usage.
 *
 * @param parsed The request body, parsed (bounded in depth: see `exceedsJsonDepth`).
 * @param generates False for embeddings: nothing is generated, the cost is the input.
 */
export function reservationFor(parsed: unknown, generates = true): RequestCost {
  const body = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : {};
  const prompts = promptsOf(body.prompt);
  const n = Math.max(1, count(body.n) ?? 1);
  const choices = prompts * n;
  const promptTokens = estimatePromptTokens(body);
  const maxTokens = count(body.max_completion_tokens) ?? count(body.max_tokens);
  const worstCase = !generates
    ? promptTokens
    : maxTokens === undefined
      ? undefined
      : promptTokens + maxTokens * choices;
  return { prompts, n, choices, promptTokens, maxTokens, worstCase };
}
