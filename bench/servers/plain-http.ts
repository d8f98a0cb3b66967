// Benchmark child: the baseline, a plain node:http server returning a fixed chat completion. With `--parse` it also
// parses the request body as JSON, as any server answering a JSON POST must; without, it discards the body unread.
import { createServer } from 'node:http';
import { serveInChild } from '../lib/child.js';

// Same shape and size as the simulator's answer to the benchmark request (max_tokens 16).
const body = JSON.stringify({
  id: 'chatcmpl-0123456789abcdef',
  object: 'chat.completion',
  created: Math.floor(Date.now() / 1000),
  model: 'meta-llama/Llama-3.1-8B-Instruct',
  choices: [
    {
      index: 0,
      message: {
        role: 'assistant',
        content: ' the a of to and in is that it for on with as was at by',
        refusal: null,
        annotations: null,
        audio: null,
        function_call: null,
        tool_calls: [],
        reasoning_content: null,
      },
      logprobs: null,
      finish_reason: 'length',
      stop_reason: null,
    },
  ],
  service_tier: null,
  system_fingerprint: null,
  usage: { prompt_tokens: 9, total_tokens: 25, completion_tokens: 16, prompt_tokens_details: null },
  prompt_logprobs: null,
  kv_transfer_params: null,
});

const parse = process.argv.includes('--parse');
const send = (res: import('node:http').ServerResponse) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
};
const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  if (!parse) {
    req.resume();
    req.on('end', () => send(res));
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    JSON.parse(Buffer.concat(chunks).toString('utf8'));
    send(res);
  });
});
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  serveInChild(`http://127.0.0.1:${port}`, () => new Promise((done) => server.close(() => done())));
});
