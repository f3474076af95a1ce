// One task, live: the planner's steps and delegations as they happen (a long-poll
// of the task's events, with the token in a header), each subtask with its replica,
// the answer as sanitised HTML, and cancel.
import { api, errorLine, h, number, seconds, statusBadge, TERMINAL, tokens } from "./lib.js";

const WAIT_S = 15;

function subtaskRows(record) {
  return record.subtasks.flatMap((s) => {
    const start = s.started_at ?? s.dispatched_at ?? s.created_at;
    const end = s.finished_at ?? Date.now() / 1000;
    const outcome = s.error
      ? h("pre", { class: "error-text" }, s.error)
      : s.result !== null && s.result !== undefined
        ? h("pre", { class: "result-text" }, s.result)
        : h("span", { class: "muted" }, "no result yet");
    return [
      h(
        "tr",
        { "data-subtask-id": s.id, "data-status": s.status },
        h("td", { class: "mono" }, s.id),
        h("td", {}, s.role),
        h("td", { class: "mono" }, s.worker ?? "–"),
        h("td", {}, statusBadge(s.status)),
        h("td", { class: "num" }, s.started_at ? seconds(end - start) : "–"),
        h("td", { class: "num" }, tokens(s.usage)),
      ),
      h(
        "tr",
        { class: "detail" },
        h(
          "td",
          { colspan: 6 },
          h("details", {}, h("summary", {}, "instruction and result"), h("pre", {}, s.instruction), outcome),
        ),
      ),
    ];
  });
}

export function taskView(main, taskId) {
  const controller = new AbortController();
  let stopped = false;
  const status = h("span");
  const facts = h("dl", { class: "facts" });
  const text = h("pre", { class: "task-text-full" });
  const cancel = h("button", { type: "button", id: "cancel-task", class: "danger", hidden: true }, "Cancel task");
  const problem = h("div");
  const events = h("ol", { id: "events", class: "events" });
  const subtasks = h("tbody", { id: "subtask-rows" });
  const answer = h("div", { id: "answer", class: "markdown" }, h("p", { class: "muted" }, "No answer yet."));
  let answered = false;
  let firstEventAt = null;

  main.append(
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Task ", h("span", { class: "mono" }, taskId)),
        status,
        cancel,
        h("a", { href: `#/tasks/${taskId}/trace`, id: "open-trace", class: "button" }, "Trace waterfall"),
      ),
      problem,
      text,
      facts,
    ),
    h("section", { class: "card" }, h("h2", {}, "Answer"), answer),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Subtasks"),
      h(
        "table",
        { id: "subtasks", class: "grid" },
        h("thead", {}, h("tr", {}, ["Subtask", "Role", "Replica", "Status", "Duration", "Tokens"].map((c) => h("th", {}, c)))),
        subtasks,
      ),
    ),
    h("section", { class: "card" }, h("h2", {}, "Plan and progress"), events),
  );

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/tasks/${encodeURIComponent(taskId)}/cancel`, { method: "POST" });
    } catch (err) {
      problem.replaceChildren(errorLine(err));
      cancel.disabled = false;
    }
  });

  const show = async (record) => {
    status.replaceChildren(statusBadge(record.status, "task-status"));
    text.textContent = record.text;
    const end = record.finished_at ?? Date.now() / 1000;
    const fact = (name, value) => [h("dt", {}, name), h("dd", {}, value)];
    facts.replaceChildren(
      ...fact("Duration", seconds(end - record.created_at)),
      ...fact("Planner steps", `${record.steps} of ${record.limits.max_steps}`),
      ...fact("Tokens", `${tokens(record.usage)} of ${number(record.limits.token_budget)} (in ${number(record.usage.input_tokens)}, out ${number(record.usage.output_tokens)})`),
      ...fact("Timeout", seconds(record.limits.timeout_s)),
      ...fact("Trace id", h("span", { class: "mono" }, record.trace_id ?? "–")),
    );
    cancel.hidden = TERMINAL.has(record.status);
    subtasks.replaceChildren(...subtaskRows(record));
    if (record.error) answer.replaceChildren(h("p", { class: "error", id: "task-error" }, record.error));
    if (record.result !== null && !answered) {
      answered = true;
      const rendered = await api(`/dashboard/tasks/${encodeURIComponent(taskId)}/answer`, { signal: controller.signal });
      // Rendered from Markdown with raw HTML off and sanitised by the server (nh3);
      // the page's Content-Security-Policy forbids inline script besides.
      answer.innerHTML = rendered.html ?? "";
      if (record.error) answer.prepend(h("p", { class: "error" }, record.error));
    }
  };

  const addEvents = (list) => {
    for (const event of list) {
      firstEventAt ??= event.at;
      const data = event.data ?? {};
      const where = [data.subtask_id, data.worker].filter(Boolean).join(" on ");
      events.append(
        h(
          "li",
          { class: `event kind-${event.kind.replace(/[^\w-]/g, "-")}`, "data-kind": event.kind },
          h("span", { class: "when num" }, `+${seconds(event.at - firstEventAt)}`),
          h("span", { class: "kind" }, event.kind),
          h("span", { class: "message" }, event.message),
          where ? h("span", { class: "muted" }, ` (${where})`) : null,
        ),
      );
    }
  };

  (async () => {
    let after = "0";
    while (!stopped) {
      try {
        const record = await api(`/tasks/${encodeURIComponent(taskId)}`, { signal: controller.signal });
        await show(record);
        const terminal = TERMINAL.has(record.status);
        const fresh = await api(
          `/tasks/${encodeURIComponent(taskId)}/events?after=${after}&wait=${terminal ? 0 : WAIT_S}`,
          { signal: controller.signal },
        );
        addEvents(fresh);
        if (fresh.length) after = fresh[fresh.length - 1].id;
        problem.replaceChildren();
        if (terminal && fresh.length === 0) return;
      } catch (err) {
        if (stopped) return;
        problem.replaceChildren(errorLine(err));
        if (err.status === 404) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
  };
}
