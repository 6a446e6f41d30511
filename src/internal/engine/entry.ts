/**
 * One physical connection as the pool sees it: what it is doing, when it was
 * made, when it must go, and how often it has been lent.
 *
 * @internal
 */
import type * as Scope from "effect/Scope"

/** @internal */
export type EntryState = "idle" | "used" | "shared" | "closed"

/** @internal */
export class Entry<C> {
  readonly connection: C
  /** Closing it closes the physical connection. */
  readonly scope: Scope.Closeable
  /** When it opened plus `maxLifetime`, shortened by this connection's own jitter. */
  readonly expiresAt: number
  /** `used`: lent to one caller alone; `shared`: carrying `borrowers` pipelined statements. */
  state: EntryState = "idle"
  /** The tenant holding it alone, counted against its in-use limit. */
  holder: string | undefined = undefined
  /** Callers sharing it while `shared`. */
  borrowers = 0
  /**
   * Carries a statement whose caller left: it takes no new borrowers, and once the others are answered
   * the statement is cancelled and the connection closed.
   */
  abandoned = false
  /** Checkouts so far, for `maxUses`. */
  uses = 0
  /** When it last went idle, for `idleTimeout`. */
  idleSince: number
  /** Set when the driver says it must not be reused while it is lent out. */
  broken = false
  /** When it was last lent alone, for leak detection. */
  takenAt = 0
  /** Where it was last taken (span, stack), when leak detection is on. */
  origin: string | undefined = undefined
  leakReported = false
  /** Idle time after which the housekeeper pings it (keepalive, with jitter). */
  keepaliveAfter = Infinity

  constructor(connection: C, scope: Scope.Closeable, createdAt: number, expiresAt: number) {
    this.connection = connection
    this.scope = scope
    this.expiresAt = expiresAt
    this.idleSince = createdAt
  }

  /** Whether it must be closed instead of lent again. */
  isSpent(now: number, maxUses: number): boolean {
    return this.broken || now >= this.expiresAt || this.uses >= maxUses
  }
}

/**
 * A connection's deadline: `maxLifetime` less a random share of up to
 * `jitter` of it, so that connections opened together do not all close
 * together and make the next callers wait for new ones.
 *
 * @internal
 */
export const expiryFor = (createdAt: number, maxLifetime: number, jitter: number, random: () => number): number =>
  maxLifetime === Infinity ? Infinity : createdAt + maxLifetime * (1 - jitter * random())
