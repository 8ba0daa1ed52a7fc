/**
 * What a server owes for each client message forwarded to it unchanged (its response queue).
 *
 * @module
 */

import { Msg } from "../protocol/messages.ts";
import { CopyState, type Server } from "./server.ts";
import { Expect } from "./response_queue.ts";

/**
 * Records what the server owes for a client message about to be forwarded unchanged. `first` is
 * the first body byte (Describe's 'S'/'P').
 */
export function expectResponse(server: Server, type: number, first: number): void {
  if (server.discardUntilSync && type !== Msg.Sync) return; // the server skips it
  switch (type) {
    case Msg.Query:
      server.expect(Expect.Query);
      return;
    case Msg.FunctionCall:
      server.expect(Expect.Function);
      return;
    case Msg.Sync:
      // Ignored by the server during COPY FROM STDIN, until the client ends the copy.
      if (server.copy === CopyState.In && !server.copyEnded) return;
      server.expect(Expect.Sync);
      return;
    case Msg.Parse:
      server.expect(Expect.Parse);
      return;
    case Msg.Bind:
      server.expect(Expect.Bind);
      return;
    case Msg.Describe:
      server.expect(first === 0x53 ? Expect.DescribeStatement : Expect.DescribePortal);
      return;
    case Msg.Execute:
      server.expect(Expect.Execute);
      return;
    case Msg.Close:
      server.expect(Expect.Close);
      return;
    case Msg.CopyDone:
    case Msg.CopyFail:
      if (server.copy === CopyState.In) server.copyEnded = true;
      server.expect(Expect.CopyEnd);
      return;
      // CopyData and Flush owe nothing.
  }
}
