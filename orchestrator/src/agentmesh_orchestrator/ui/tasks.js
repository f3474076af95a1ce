// The task list: a page of summaries polled every two seconds, a status filter,
// pages through thousands of tasks, and a form to submit a task with its limits.
import { api, errorLine, every, h, number, seconds, statusBadge, tokens } from "./lib.js";

const PAGE = 25;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

function optionalNumber(input) {
  const value = input.value.trim();
  return value === "" ? undefined : Number(value);
}

function submitForm() {
  const text = h("textarea", { id: "task-text", rows: 3, required: true, placeholder: "What should the mesh do?" });
  const budget = h("input", { id: "task-budget", type: "number", min: 1, step: 1, placeholder: "default" });
  const steps = h("input", { id: "task-steps", type: "number", min: 1, max: 1000, step: 1, placeholder: "default" });
  const timeout = h("input", { id: "task-timeout", type: "number", min: 1, step: "any", placeholder: "default" });
  const message = h("div", { id: "submit-message" });
  const form = h(
    "form",
    { id: "submit-task", class: "card" },
    h("h2", {}, "Submit a task"),
    text,
    h(
      "div",
      { class: "limits" },
      h("label", {}, "Token budget ", budget),
      h("label", {}, "Max steps ", steps),
      h("label", {}, "Timeout (s) ", timeout),
      h("button", { type: "submit", id: "task-submit" }, "Submit"),
    ),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.replaceChildren();
    const body = {
      text: text.value,
      token_budget: optionalNumber(budget),
      max_steps: optionalNumber(steps),
      timeout_s: optionalNumber(timeout),
    };
    try {
      const task = await api("/tasks", { method: "POST", body });
      location.hash = `#/tasks/${task.id}`;
    } catch (err) {
      message.append(errorLine(err));
    }
  });
  return form;
}

function row(task, now) {
  const end = task.finished_at ?? now;
  return h(
    "tr",
    { "data-task-id": task.id, "data-status": task.status },
    h("td", { class: "task-text" }, h("a", { href: `#/tasks/${task.id}` }, task.text || task.id)),
    h("td", {}, statusBadge(task.status)),
    h("td", { class: "num" }, seconds(now - task.created_at)),
    h("td", { class: "num" }, seconds(end - task.created_at)),
    h("td", { class: "num" }, tokens(task.usage)),
    h("td", { class: "num" }, `${task.subtasks_done}/${task.subtasks_total}`),
  );
}

export function tasksView(main) {
  let offset = 0;
  const previous = [];
  let status = "";
  const body = h("tbody", { id: "task-rows" });
  const summary = h("span", { id: "task-count", class: "muted" });
  const problem = h("div");
  const newer = h("button", { type: "button", id: "page-newer" }, "← Newer");
  const older = h("button", { type: "button", id: "page-older" }, "Older →");
  const filter = h(
    "select",
    { id: "status-filter" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  let nextOffset = null;

  const refresh = async () => {
    const query = new URLSearchParams({ offset, limit: PAGE });
    if (status) query.set("status", status);
    try {
      const page = await api(`/dashboard/tasks?${query}`);
      body.replaceChildren(...page.tasks.map((t) => row(t, page.now)));
      if (page.tasks.length === 0) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No tasks here.")));
      nextOffset = page.next_offset;
      older.disabled = nextOffset === null;
      newer.disabled = previous.length === 0;
      summary.textContent = `${page.tasks.length} shown · ${number(page.stored)} stored`;
      problem.replaceChildren();
    } catch (err) {
      problem.replaceChildren(errorLine(err));
    }
  };
  let stop = every(2000, refresh);
  const restart = () => {
    stop();
    stop = every(2000, refresh);
  };
  filter.addEventListener("change", () => {
    status = filter.value;
    offset = 0;
    previous.length = 0;
    restart();
  });
  older.addEventListener("click", () => {
    if (nextOffset === null) return;
    previous.push(offset);
    offset = nextOffset;
    restart();
  });
  newer.addEventListener("click", () => {
    offset = previous.pop() ?? 0;
    restart();
  });

  main.append(
    submitForm(),
    h(
      "section",
      { class: "card" },
      h("div", { class: "toolbar" }, h("h2", {}, "Tasks"), h("label", {}, "Status ", filter), summary),
      problem,
      h(
        "table",
        { id: "tasks", class: "grid" },
        h(
          "thead",
          {},
          h("tr", {}, ["Task", "Status", "Age", "Duration", "Tokens", "Subtasks"].map((c) => h("th", {}, c))),
        ),
        body,
      ),
      h("div", { class: "pager" }, newer, older),
    ),
  );
  return () => stop();
}
