/**
 * The real broker binary for integration tests: `$SWITCHYARD_BIN` or
 * `<repo>/target/debug/switchyard` (nothing is built here). Started with `--listen ADDR
 * --metrics-listen off --log-level info`; its address is read from its stderr line
 * `switchyard listening on ADDR`; stopped by PID.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { type AddressInfo, type Server, type Socket, createConnection, createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs from clients/js/dist-test/test/). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export function brokerBinary(): string {
  const path = process.env["SWITCHYARD_BIN"] ?? resolve(REPO, "target/debug/switchyard");
  if (!existsSync(path)) throw new Error(`no broker binary at ${path} (build it: cargo build --bin switchyard)`);
  return path;
}

export class Broker {
  private constructor(
    private readonly proc: ChildProcess,
    /** `IP:port` the broker listens on. */
    readonly addr: string,
    private readonly exited: Promise<void>,
    readonly log: string[],
  ) {}

  /** `tcp://ADDR`. */
  get url(): string {
    return `tcp://${this.addr}`;
  }

  /** Starts a broker with extra `args`, on `listen` (default an ephemeral port). */
  static start(args: string[] = [], listen = "127.0.0.1:0"): Promise<Broker> {
    const proc = spawn(brokerBinary(), ["--listen", listen, "--metrics-listen", "off", "--log-level", "info", ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    const log: string[] = [];
    const exited = new Promise<void>((done) => proc.once("exit", () => done()));
    return new Promise<Broker>((resolveStart, reject) => {
      let pending = "";
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new Error(`broker did not report its address: ${log.join("")}`));
      }, 10_000);
      proc.once("exit", () => {
        clearTimeout(timer);
        reject(new Error(`broker exited: ${log.join("")}`));
      });
      proc.stderr?.setEncoding("utf8");
      proc.stderr?.on("data", (text: string) => {
        log.push(text);
        pending += text;
        const found = /switchyard listening on (\S+)/.exec(pending);
        if (found?.[1]) {
          clearTimeout(timer);
          pending = "";
          resolveStart(new Broker(proc, found[1], exited, log));
        }
      });
    });
  }

  /** SIGKILL by PID (as a crash would), and wait for the exit. */
  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null && this.proc.pid !== undefined) {
      process.kill(this.proc.pid, "SIGKILL");
    }
    await this.exited;
  }

  /** SIGTERM by PID (the broker drains), SIGKILL if it lingers past 8 s. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null || this.proc.pid === undefined) return;
    process.kill(this.proc.pid, "SIGTERM");
    const timer = setTimeout(() => this.proc.pid !== undefined && process.kill(this.proc.pid, "SIGKILL"), 8000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** A fresh random channel per test, so tests sharing a broker never see each other. */
export function freshChannel(): string {
  return globalThis.crypto.randomUUID();
}

/** Random bytes (crypto.getRandomValues is limited to 64 KiB per call). */
export function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) globalThis.crypto.getRandomValues(out.subarray(i, Math.min(size, i + 65536)));
  return out;
}

export function reversed(data: Uint8Array): Uint8Array {
  return Uint8Array.from(data).reverse();
}

/** Rejects when `promise` does not settle within `ms` (a test never hangs). */
export function within<T>(promise: Promise<T>, ms: number, what = "operation"): Promise<T> {
  return new Promise<T>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${what} did not settle within ${ms} ms`)), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        res(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        rej(e);
      },
    );
  });
}

/**
 * A TCP relay in front of a broker, whose connections a test can cut (both sides closed at
 * once, as a dropped link): the broker sees its client's connection close, the client sees the
 * broker's. `accepted(n)` resolves once `n` connections in total have been accepted.
 */
export class Relay {
  private readonly sockets = new Set<Socket>();
  private count = 0;
  private readonly waiters: { n: number; resolve: () => void }[] = [];

  private constructor(private readonly server: Server, readonly addr: string) {}

  get url(): string {
    return `tcp://${this.addr}`;
  }

  static start(target: string): Promise<Relay> {
    const colon = target.lastIndexOf(":");
    const host = target.slice(0, colon);
    const port = Number(target.slice(colon + 1));
    return new Promise<Relay>((resolveStart, reject) => {
      let relay: Relay | undefined;
      const server = createServer((client) => {
        const upstream = createConnection({ host, port });
        const pair = [client, upstream];
        for (const s of pair) {
          relay?.sockets.add(s);
          s.on("error", () => undefined);
          s.on("close", () => {
            relay?.sockets.delete(s);
            for (const other of pair) other.destroy();
          });
        }
        client.pipe(upstream);
        upstream.pipe(client);
        if (relay) {
          relay.count++;
          for (const w of relay.waiters.filter((w) => relay !== undefined && relay.count >= w.n)) {
            relay.waiters.splice(relay.waiters.indexOf(w), 1);
            w.resolve();
          }
        }
      });
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const { port: bound } = server.address() as AddressInfo;
        relay = new Relay(server, `127.0.0.1:${bound}`);
        resolveStart(relay);
      });
    });
  }

  /** Resolves once `n` connections in total have been accepted. */
  accepted(n: number): Promise<void> {
    if (this.count >= n) return Promise.resolve();
    return new Promise<void>((resolve) => this.waiters.push({ n, resolve }));
  }

  /** Cuts every relayed connection (both sides); the relay keeps listening. */
  cut(): void {
    for (const s of [...this.sockets]) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
