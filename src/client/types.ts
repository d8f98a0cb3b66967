// OpenAI-compatible request and response shapes with vLLM's extras. Every response field is optional-tolerant:
// servers differ by version, so unknown fields pass through and missing ones are allowed where vLLM omits them.

export type Role = 'system' | 'user' | 'assistant' | 'tool' | 'developer' | (string & {});

export interface ChatMessage {
  role: Role;
  content: string | null | Array<{ type: string; text?: string; [key: string]: unknown }>;
  name?: string;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
  [key: string]: unknown;
}

export interface ToolCall {
  id: string;
  type: 'function' | (string & {});
  function: { name: string; arguments: string };
}

/** Common sampling fields; vLLM accepts many more (`top_k`, `min_p`, `guided_json`, …), passed through as is. */
interface SamplingParams {
  model?: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  n?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  /** Set by the client: `false` for the promise methods, `true` for the streaming ones. */
  stream?: boolean | null;
  /** `{ include_usage: true }` adds a final usage chunk to a stream. */
  stream_options?: { include_usage?: boolean; [key: string]: unknown } | null;
  [key: string]: unknown;
}

export interface ChatCompletionRequest extends SamplingParams {
  messages: ChatMessage[];
  max_completion_tokens?: number | null;
  tools?: unknown[];
  tool_choice?: unknown;
  response_format?: unknown;
}

export interface CompletionRequest extends SamplingParams {
  prompt: string | string[] | number[] | number[][];
  echo?: boolean;
}

export interface EmbeddingRequest {
  input: string | string[] | number[] | number[][];
  model?: string;
  encoding_format?: 'float' | 'base64';
  dimensions?: number;
  [key: string]: unknown;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens?: number;
  total_tokens: number;
  prompt_tokens_details?: unknown;
  [key: string]: unknown;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'abort' | (string & {});

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: {
      role: 'assistant' | (string & {});
      content: string | null;
      tool_calls?: ToolCall[];
      /** vLLM's reasoning parsers fill this. */
      reasoning_content?: string | null;
      [key: string]: unknown;
    };
    logprobs?: unknown;
    finish_reason: FinishReason | null;
    /** vLLM: the stop string or token id that ended generation. */
    stop_reason?: string | number | null;
    [key: string]: unknown;
  }>;
  usage?: Usage | null;
  [key: string]: unknown;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: {
      role?: string;
      content?: string | null;
      tool_calls?: Array<Partial<ToolCall> & { index: number }>;
      reasoning_content?: string | null;
      [key: string]: unknown;
    };
    logprobs?: unknown;
    finish_reason: FinishReason | null;
    stop_reason?: string | number | null;
    [key: string]: unknown;
  }>;
  /** Present on the last chunk with `stream_options.include_usage` (then `choices` is empty). */
  usage?: Usage | null;
  [key: string]: unknown;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    text: string;
    logprobs?: unknown;
    finish_reason: FinishReason | null;
    stop_reason?: string | number | null;
    [key: string]: unknown;
  }>;
  usage?: Usage | null;
  [key: string]: unknown;
}

/** A streamed completion chunk has the same shape as a completion. */
export type CompletionChunk = Completion;

export interface EmbeddingList {
  object: 'list';
  data: Array<{ index: number; object: 'embedding'; embedding: number[] | string }>;
  model: string;
  usage?: Usage;
  [key: string]: unknown;
}

export interface ModelList {
  object: 'list';
  data: Array<{
    id: string;
    object: 'model';
    created?: number;
    owned_by?: string;
    max_model_len?: number;
    [key: string]: unknown;
  }>;
}
