/**
 * A small promise-based FIFO with deadlines, closing and a bounded-capacity policy.
 *
 * Invariants: an item is removed only by the `get` that returns it (an expired `get` loses
 * nothing); after {@link Inbox.close}, items already queued are still returned, then every `get`
 * rejects with the close reason. Every timer a `get` arms is cleared when it settles.
 */

import { SwitchyardError, Timeout } from "./errors.js";

interface Waiter {
  wake(): void;
}

export class Inbox<T> {
  private items: T[] = [];
  private head = 0;
  private readonly waiters = new Set<Waiter>();
  private reason: SwitchyardError | undefined;

  /**
   * `capacity` undefined is unbounded; when full, `dropOldest` makes room by dropping the oldest
   * item, else {@link put} refuses the new one.
   */
  constructor(private readonly capacity?: number, private readonly dropOldest = false) {}

  get size(): number {
    return this.items.length - this.head;
  }

  /** The close reason, or `undefined` while open. */
  get closed(): SwitchyardError | undefined {
    return this.reason;
  }

  /** Queues `item`; false when it was refused (full, or closed). */
  put(item: T): boolean {
    if (this.reason) return false;
    if (this.capacity !== undefined && this.size >= this.capacity) {
      if (!this.dropOldest) return false;
      this.shift();
    }
    this.items.push(item);
    this.wakeAll();
    return true;
  }

  /** Closes the inbox (the first reason wins) and wakes every waiter. */
  close(reason: SwitchyardError): void {
    this.reason ??= reason;
    this.wakeAll();
  }

  /** The next item if one is queued. */
  tryGet(): { item: T } | undefined {
    return this.size > 0 ? { item: this.shift() } : undefined;
  }

  /**
   * The next item. Past `timeoutMs` (undefined: no limit) rejects with {@link Timeout}; after
   * {@link close} and once empty, rejects with the close reason.
   */
  async get(timeoutMs?: number): Promise<T> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      if (this.size > 0) return this.shift();
      if (this.reason) throw this.reason;
      const remaining = deadline === undefined ? undefined : deadline - Date.now();
      if (remaining !== undefined && remaining <= 0) throw new Timeout("nothing arrived in time");
      await new Promise<void>((resolve) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const waiter: Waiter = {
          wake: () => {
            if (timer !== undefined) clearTimeout(timer);
            this.waiters.delete(waiter);
            resolve();
          },
        };
        this.waiters.add(waiter);
        if (remaining !== undefined) timer = setTimeout(waiter.wake, remaining);
      });
    }
  }

  private shift(): T {
    const item = this.items[this.head] as T;
    this.items[this.head] = undefined as T;
    this.head++;
    if (this.head > 64 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  private wakeAll(): void {
    for (const waiter of [...this.waiters]) waiter.wake();
  }
}
