// Live replicas per role (in-flight loops, last heartbeat) and each role's queue depth.
import { api, errorLine, every, h, number, seconds } from "./lib.js";

export function workersView(main) {
  const rows = h("tbody", { id: "worker-rows" });
  const queues = h("dl", { id: "queues", class: "queues" });
  const problem = h("div");
  main.append(
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Queues"),
      h("p", { class: "muted" }, "Subtasks waiting for a replica of each role."),
      queues,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Workers"),
      problem,
      h(
        "table",
        { id: "workers", class: "grid" },
        h(
          "thead",
          {},
          h("tr", {}, ["Role", "Replica", "In flight", "Processed", "Last heartbeat", "Up for"].map((c) => h("th", {}, c))),
        ),
        rows,
      ),
    ),
  );
  return every(2000, async () => {
    try {
      const [workers, depths] = await Promise.all([api("/workers"), api("/dashboard/queues")]);
      const now = Date.now() / 1000;
      rows.replaceChildren(
        ...workers.map((w) =>
          h(
            "tr",
            { "data-role": w.role, "data-hostname": w.hostname },
            h("td", {}, w.role),
            h("td", { class: "mono" }, w.hostname),
            h("td", { class: "num" }, `${w.in_flight} / ${w.concurrency}`),
            h("td", { class: "num" }, number(w.processed)),
            h("td", { class: "num" }, `${seconds(Math.max(0, now - w.last_seen))} ago`),
            h("td", { class: "num" }, seconds(Math.max(0, now - w.started_at))),
          ),
        ),
      );
      if (workers.length === 0) rows.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No live workers.")));
      queues.replaceChildren(
        ...Object.entries(depths).flatMap(([role, depth]) => [
          h("dt", {}, role),
          h("dd", { "data-role": role }, number(depth)),
        ]),
      );
      problem.replaceChildren();
    } catch (err) {
      problem.replaceChildren(errorLine(err));
    }
  });
}
