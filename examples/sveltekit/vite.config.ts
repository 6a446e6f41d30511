/**
 * The example's SvelteKit app, built for Node with adapter-node. Its
 * dependencies are the repository's (the root package.json); everything is
 * bundled into the server, so `build/` runs with plain `node`.
 *
 * The test builds it elsewhere: `MESHHOOK_SVELTEKIT_OUT` and
 * `MESHHOOK_SVELTEKIT_WORK` move the server and SvelteKit's own output
 * directory out of the work tree.
 */
import adapter from "@sveltejs/adapter-node"
import { sveltekit } from "@sveltejs/kit/vite"
import { defineConfig } from "vite"

export default defineConfig({
  plugins: [
    sveltekit({
      adapter: adapter({ out: process.env.MESHHOOK_SVELTEKIT_OUT ?? "build", precompress: false }),
      outDir: process.env.MESHHOOK_SVELTEKIT_WORK ?? ".svelte-kit"
    })
  ]
})
