// janus-batch dashboard: live refresh of server-rendered partials, and the cancel button.
// An element with data-poll="URL" has its content replaced by GET URL every 2 s (while the
// tab is visible). A polled job summary that turns final stops polling and reloads the page
// once, so the gallery and error tables show the finished job. A thumbnail that fails to load
// is replaced by its placeholder.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var HEADERS = { "X-Janus-UI": "1" };

  function isFinal(el) {
    var s = el.querySelector("[data-final]");
    return s !== null && s.getAttribute("data-final") === "true";
  }

  function poll(el) {
    var url = el.getAttribute("data-poll");
    var wasFinal = isFinal(el);
    var hasSummary = el.querySelector("[data-final]") !== null;
    if (hasSummary && wasFinal) return;  // nothing will change any more

    function tick() {
      if (document.hidden) return setTimeout(tick, POLL_MS);
      fetch(url, { headers: HEADERS, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) el.innerHTML = html;
          if (hasSummary && isFinal(el)) {
            if (!wasFinal) window.location.reload();
            return;
          }
          setTimeout(tick, POLL_MS);
        })
        .catch(function () { setTimeout(tick, POLL_MS * 2); });
    }
    el.refresh = tick;
    setTimeout(tick, POLL_MS);
  }

  // What a cancel did and what happens next, from the job the API answered with (the CLI's
  // `janus-batch cancel` says the same): running items whose pass has not started are
  // cancelled before it, the others finish.
  function cancelled(job) {
    var c = job.counts;
    var parts = [c.cancelled + " pending items cancelled"];
    if (c.running) {
      parts.push(c.running + " running items will finish or be cancelled before their next pass");
    }
    parts.push(c.succeeded + " succeeded and " + c.failed + " failed kept");
    return parts.join("; ") + ".";
  }

  function cancel(button) {
    if (!window.confirm("Cancel this job? Pending items are cancelled; running ones finish or are " +
                        "cancelled before their next pass; finished ones are kept.")) return;
    var message = document.getElementById("cancel-message");
    button.disabled = true;
    fetch(button.getAttribute("data-cancel"), {
      method: "POST", headers: HEADERS, credentials: "same-origin"
    })
      .then(function (r) {
        if (r.ok) {
          return r.json().then(function (job) {
            if (message) message.textContent = cancelled(job);
          });
        }
        return r.json().then(function (body) {
          button.disabled = false;
          if (message) message.textContent = (body.error && body.error.message) || ("HTTP " + r.status);
        });
      })
      .catch(function (e) {
        button.disabled = false;
        if (message) message.textContent = String(e);
      });
  }

  // An image that cannot be loaded shows the placeholder its data-fallback names (a script,
  // not an onerror attribute: the page's Content-Security-Policy runs no inline code).
  function fallback(img) {
    var src = img.getAttribute("data-fallback");
    if (!src || img.dataset.broken) return;
    img.dataset.broken = "1";
    img.src = src;
  }

  document.addEventListener("error", function (event) {
    if (event.target instanceof HTMLImageElement) fallback(event.target);
  }, true);  // error events do not bubble: catch them on the way down

  // images that failed before this (deferred) script ran
  Array.prototype.forEach.call(document.querySelectorAll("img[data-fallback]"), function (img) {
    if (img.complete && img.naturalWidth === 0) fallback(img);
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-cancel]");
    if (button) cancel(button);
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-poll]"), poll);
  });
})();
