// The SSE parser: split events, several per chunk, CRLF, comments, multi-line data and [DONE].
import { describe, expect, it } from 'vitest';
import { SseParser } from '../../src/client/sse.js';

describe('SseParser', () => {
  it('joins events split across chunks, even mid-field', () => {
    const parser = new SseParser();
    expect(parser.push('da')).toEqual([]);
    expect(parser.push('ta: {"a"')).toEqual([]);
    expect(parser.push(':1}\n')).toEqual([]);
    expect(parser.push('\ndata: [DONE]\n\n')).toEqual(['{"a":1}', '[DONE]']);
  });

  it('returns several events from one chunk, with CRLF line ends', () => {
    const parser = new SseParser();
    expect(parser.push('data: 1\r\n\r\ndata: 2\r\n\r\ndata: 3\r\n')).toEqual(['1', '2']);
    expect(parser.push('\r\n')).toEqual(['3']);
  });

  it('skips comments and other fields, and joins multi-line data', () => {
    const parser = new SseParser();
    expect(parser.push(': keep-alive\n\nevent: message\nid: 7\ndata: a\ndata: b\nretry: 10\n\n')).toEqual([
      'a\nb',
    ]);
    expect(parser.push('data:no-space\n\n')).toEqual(['no-space']);
  });

  it('never emits an unterminated event (a cut stream), and completes it when the rest comes', () => {
    const parser = new SseParser();
    expect(parser.push('data: {"partial"')).toEqual([]);
    expect(parser.push('}\n\n')).toEqual(['{"partial"}']);
  });
});
