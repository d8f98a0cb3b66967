// Incremental Server-Sent Events parser: events split across chunks, several per chunk, CRLF, comments, [DONE].

/**
 * Feed it decoded text; it returns the `data` payload of every event completed so far. Comment lines (`:`) and other
 * fields are skipped; multi-line `data` is joined with `\n`. Only the unfinished tail is kept between calls.
 */
export class SseParser {
  private tail = '';
  private data: string[] = [];

  push(text: string): string[] {
    const events: string[] = [];
    const input = this.tail === '' ? text : this.tail + text;
    let start = 0;
    for (;;) {
      const newline = input.indexOf('\n', start);
      if (newline === -1) break;
      const end = newline > start && input.charCodeAt(newline - 1) === 13 ? newline - 1 : newline;
      this.line(input, start, end, events);
      start = newline + 1;
    }
    this.tail = start === 0 ? input : input.slice(start);
    return events;
  }

  private line(input: string, start: number, end: number, events: string[]): void {
    if (end === start) {
      // A blank line dispatches the event.
      if (this.data.length > 0) {
        events.push(this.data.length === 1 ? this.data[0]! : this.data.join('\n'));
        this.data = [];
      }
      return;
    }
    if (input.charCodeAt(start) === 58 /* : */) return;
    if (input.startsWith('data:', start)) {
      const valueStart = input.charCodeAt(start + 5) === 32 ? start + 6 : start + 5;
      this.data.push(input.slice(valueStart, end));
    }
  }
}
