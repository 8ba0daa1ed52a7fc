# pgdog on the official Deno image. Build: docker build -t pgdog .
# Run:   docker run -p 6432:6432 -v "$PWD":/etc/pgdog pgdog
# (mount a directory holding pgdog.toml and users.toml at /etc/pgdog).
FROM denoland/deno:2.9.6

WORKDIR /app

# Dependencies first, so they are cached across source changes.
COPY deno.json deno.lock ./
RUN deno install --frozen

COPY mod.ts ./
COPY src ./src
RUN deno cache --frozen mod.ts

# The defaults point at 127.0.0.1:5432; mount your own at /etc/pgdog.
COPY pgdog.toml users.toml /etc/pgdog/

USER deno
EXPOSE 6432

ENTRYPOINT ["deno", "run", "--frozen", "--cached-only", "--no-prompt", \
  "--allow-net", "--allow-read=/app,/etc/pgdog", "--allow-env=PGDOG_*,NODE_ID", "--allow-run=deno", \
  "/app/mod.ts"]
CMD ["-c", "/etc/pgdog/pgdog.toml", "-u", "/etc/pgdog/users.toml"]
