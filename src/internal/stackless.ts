/**
 * Builds errors without capturing JavaScript stacks: for the pool's
 * refusals, whose stack says nothing the error does not (the caller's place
 * is in its span), and which come in floods when the pool sheds load (stack
 * capture and the garbage it made took about a quarter of the CPU with
 * 20,000 shed workers).
 *
 * @internal
 */
export const stackless = <A>(make: () => A): A => {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return make()
  } finally {
    Error.stackTraceLimit = limit
  }
}
