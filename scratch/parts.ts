const b = Buffer.from(
  'data: {"id":"chatcmpl-abc123abc123abc123","object":"chat.completion.chunk","created":1764550000,"model":"m","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":40,"completion_tokens":28}}\n\n',
);
const N = 2_000_000;
function time(name: string, fn: () => unknown) {
  for (let i = 0; i < 100000; i++) fn();
  const t = process.hrtime.bigint();
  let x: unknown;
  for (let i = 0; i < N; i++) x = fn();
  console.log(
    name,
    (Number(process.hrtime.bigint() - t) / N).toFixed(1),
    'ns',
    typeof x === 'number' ? '' : '',
  );
}
time('toString latin1', () => b.toString('latin1'));
time('latin1Slice', () => (b as any).latin1Slice(0, b.length));
const s = b.toString('latin1');
time('indexOf nn', () => s.indexOf('\n\n'));
time('indexOf choices', () => s.indexOf('"choices":[{'));
time('indexOf content empty', () => s.indexOf('"content":""'));
time('lastIndexOf usage', () => s.lastIndexOf('"usage":'));
time('slice+startsWith', () => s.slice(0, 250).startsWith('data: [DONE]'));
time('Buffer.from latin1', () => Buffer.from(s, 'latin1'));
time('subarray', () => b.subarray(0, 100));
time('concat3', () => Buffer.concat([b.subarray(0, 100), b.subarray(120, 200), b.subarray(210)]));
time('alloc+2copy', () => {
  const o = Buffer.allocUnsafe(b.length - 60);
  b.copy(o, 0, 0, 180);
  b.copy(o, 180, 240);
  return o;
});
time('str concat + from', () => Buffer.from(s.slice(0, 180) + s.slice(240), 'latin1'));
time('concat2', () => Buffer.concat([b.subarray(0, 180), b.subarray(240)]));
