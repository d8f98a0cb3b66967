// Parses and validates request bodies the way vLLM's pydantic models do, returning 400-style problems.
import { countTextTokens } from './generation.js';

export interface RequestProblem {
  status: number;
  message: string;
  param: string | null;
}

export interface GenerationRequest {
  chat: boolean;
  model: string | undefined;
  stream: boolean;
  includeUsage: boolean;
  /** `stream_options.continuous_usage_stats` (with `include_usage`, as vLLM requires): usage on every chunk. */
  continuousUsage: boolean;
  /** `max_tokens` / `max_completion_tokens`, when given. */
  maxTokens: number | undefined;
  /** Number of choices to generate (prompts × `n`). */
  choices: number;
  /** Prompts in the request (a completion's list of prompts; each is processed, and counted, on its own). */
  prompts: number;
  /** Prompt text, for the deterministic seed and the token count. */
  promptText: string;
  promptTokens: number;
  seed: number | undefined;
}

export interface EmbeddingRequest {
  model: string | undefined;
  inputs: string[];
  /** `base64`: little-endian float32 bytes, base64-encoded (what the openai SDK asks for by default). */
  base64: boolean;
  promptTokens: number;
}

const problem = (message: string, param: string | null = null): RequestProblem => ({
  status: 400,
  message,
  param,
});

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalModel(body: Record<string, unknown>): string | undefined | RequestProblem {
  const model = body.model;
  if (model === undefined || model === null) return undefined;
  if (typeof model !== 'string') return problem('model: Input should be a valid string', 'model');
  return model;
}

function optionalInt(
  body: Record<string, unknown>,
  field: string,
  min: number,
): number | undefined | RequestProblem {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    return problem(`${field}: Input should be a valid integer`, field);
  }
  if (value < min) return problem(`${field} must be at least ${min}, got ${value}.`, field);
  return value;
}

function messageText(content: unknown): string | RequestProblem {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    let text = '';
    for (const part of content) {
      if (isRecord(part) && typeof part.text === 'string') text += part.text;
    }
    return text;
  }
  return problem('messages: content should be a string or a list of content parts', 'messages');
}

function isProblem(value: unknown): value is RequestProblem {
  return isRecord(value) && typeof value.status === 'number' && typeof value.message === 'string';
}

export function parseGenerationRequest(body: unknown, chat: boolean): GenerationRequest | RequestProblem {
  if (!isRecord(body)) return problem('The request body must be a JSON object');
  const model = optionalModel(body);
  if (isProblem(model)) return model;

  let promptText = '';
  let prompts = 1;
  let promptTokens = 0;
  if (chat) {
    const messages = body.messages;
    if (!Array.isArray(messages)) {
      return problem(
        messages === undefined ? 'messages: Field required' : 'messages: Input should be a valid list',
        'messages',
      );
    }
    for (const message of messages) {
      if (!isRecord(message) || typeof message.role !== 'string') {
        return problem('messages: each message needs a string `role`', 'messages');
      }
      const text = messageText(message.content);
      if (isProblem(text)) return text;
      promptText += `${message.role}\n${text}\n`;
      // The chat template adds a few tokens per message.
      promptTokens += countTextTokens(text) + 4;
    }
    promptTokens += 1;
  } else {
    const prompt = body.prompt;
    if (typeof prompt === 'string') {
      promptText = prompt;
    } else if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((p) => typeof p === 'string')) {
      prompts = prompt.length;
      promptText = prompt.join('\n');
    } else if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((p) => typeof p === 'number')) {
      promptText = prompt.join(' ');
      promptTokens = prompt.length;
    } else {
      return problem(
        prompt === undefined ? 'prompt: Field required' : 'prompt: Input should be a string or a list',
        'prompt',
      );
    }
    if (promptTokens === 0) promptTokens = Math.max(1, countTextTokens(promptText) / prompts) | 0;
  }

  const stream = body.stream;
  if (stream !== undefined && stream !== null && typeof stream !== 'boolean') {
    return problem('stream: Input should be a valid boolean', 'stream');
  }
  const streamOptions = body.stream_options;
  if (streamOptions !== undefined && streamOptions !== null) {
    if (stream !== true)
      return problem('Stream options can only be defined when `stream=True`.', 'stream_options');
    if (!isRecord(streamOptions))
      return problem('stream_options: Input should be an object', 'stream_options');
  }
  const maxTokens = optionalInt(body, 'max_tokens', 1);
  if (isProblem(maxTokens)) return maxTokens;
  const maxCompletionTokens = chat ? optionalInt(body, 'max_completion_tokens', 1) : undefined;
  if (isProblem(maxCompletionTokens)) return maxCompletionTokens;
  const n = optionalInt(body, 'n', 1);
  if (isProblem(n)) return n;
  const seed = optionalInt(body, 'seed', Number.MIN_SAFE_INTEGER);
  if (isProblem(seed)) return seed;

  return {
    chat,
    model,
    stream: stream === true,
    includeUsage: stream === true && isRecord(streamOptions) && streamOptions.include_usage === true,
    continuousUsage:
      stream === true &&
      isRecord(streamOptions) &&
      streamOptions.include_usage === true &&
      streamOptions.continuous_usage_stats === true,
    maxTokens: maxCompletionTokens ?? maxTokens ?? (chat ? undefined : 16),
    choices: prompts * (n ?? 1),
    prompts,
    promptText,
    promptTokens,
    seed,
  };
}

export function parseEmbeddingRequest(body: unknown): EmbeddingRequest | RequestProblem {
  if (!isRecord(body)) return problem('The request body must be a JSON object');
  const model = optionalModel(body);
  if (isProblem(model)) return model;
  const input = body.input;
  let inputs: string[];
  if (typeof input === 'string') inputs = [input];
  else if (Array.isArray(input) && input.length > 0 && input.every((i) => typeof i === 'string'))
    inputs = input;
  else if (Array.isArray(input) && input.length > 0 && input.every((i) => typeof i === 'number')) {
    inputs = [input.join(' ')];
  } else if (
    Array.isArray(input) &&
    input.length > 0 &&
    input.every((i) => Array.isArray(i) && i.every((t) => typeof t === 'number'))
  ) {
    inputs = input.map((tokens) => (tokens as number[]).join(' '));
  } else {
    return problem(
      input === undefined ? 'input: Field required' : 'input: Input should be a string or a list',
      'input',
    );
  }
  const format = body.encoding_format;
  if (format !== undefined && format !== null && format !== 'float' && format !== 'base64') {
    return problem("encoding_format: Input should be 'float' or 'base64'", 'encoding_format');
  }
  let promptTokens = 0;
  for (const text of inputs) promptTokens += Math.max(1, countTextTokens(text));
  return { model, inputs, promptTokens, base64: format === 'base64' };
}

export { isProblem };
