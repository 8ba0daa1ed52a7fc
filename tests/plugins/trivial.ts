/** A plugin that answers every route call with no opinion (for measuring the call's cost). */

import { definePlugin } from "@pgdog/pgdog/plugin";

export default definePlugin({
  apiVersion: "1.0.0",
  route() {
    return null;
  },
});
