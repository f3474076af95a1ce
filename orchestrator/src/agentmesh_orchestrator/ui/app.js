// The dashboard's entry point: sign-in, and a router over the location's hash.
//   #/tasks            the task list (filter, pages, submit)
//   #/tasks/ID         one task, live
//   #/tasks/ID/trace   its trace as a waterfall
//   #/workers          replicas per role and queue depths
import { api, ApiError, errorLine, h, session } from "./lib.js";
import { tasksView } from "./tasks.js";
import { taskView } from "./task.js";
import { traceView } from "./trace.js";
import { workersView } from "./workers.js";

let stopView = null;

function signInView(main) {
  const input = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "off",
    required: true,
    placeholder: "the API token (secrets/api_token)",
  });
  const message = h("div");
  const form = h(
    "form",
    { id: "sign-in", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "The page uses the API's bearer token. It stays in this tab only and is sent as a header, never in an address."),
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit", id: "sign-in-button" }, "Sign in"),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.replaceChildren();
    session.signIn(input.value.trim());
    try {
      await api("/dashboard/tasks?limit=1", { signOutOn401: false });
      route();
    } catch (err) {
      session.signOut();
      message.append(errorLine(err instanceof ApiError && err.status === 401 ? "That token was refused." : err));
    }
  });
  main.append(form);
  input.focus();
  return null;
}

function route() {
  if (stopView) stopView();
  stopView = null;
  const main = document.getElementById("main");
  main.replaceChildren();
  const signedIn = Boolean(session.token());
  document.getElementById("sign-out").hidden = !signedIn;
  for (const link of document.querySelectorAll("nav a")) link.classList.remove("here");
  if (!signedIn) {
    stopView = signInView(main);
    return;
  }
  const hash = location.hash || "#/tasks";
  let match;
  if ((match = hash.match(/^#\/tasks\/([\w.:-]+)\/trace$/))) {
    stopView = traceView(main, match[1]);
  } else if ((match = hash.match(/^#\/tasks\/([\w.:-]+)$/))) {
    stopView = taskView(main, match[1]);
  } else if (hash.startsWith("#/workers")) {
    document.getElementById("nav-workers").classList.add("here");
    stopView = workersView(main);
  } else {
    document.getElementById("nav-tasks").classList.add("here");
    stopView = tasksView(main);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  route();
});
window.addEventListener("hashchange", route);
window.addEventListener("agentmesh:signed-out", route);
route();
