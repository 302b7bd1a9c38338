// The Audit page's result renderer: what verifying the chain found (POST /api/audit/verify).
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  const el = window.consoleEl; // (tag, text, cls): console.js

  function fact(list, term, value, cls) {
    list.append(el("dt", term), el("dd", value, cls));
  }

  renderers.auditVerify = (data, box) => {
    const status = el("p", "", data.ok ? "alert ok" : "alert");
    status.append(el("strong", data.ok ? "verified" : "FAILED"), " " + data.message);
    box.append(status);
    const facts = el("dl", undefined, "facts");
    const range = data.first_seq === null ? "none" : `#${data.first_seq} – #${data.last_seq}`;
    fact(facts, "Records", `${data.records} (${range})`);
    fact(facts, "Head hash", data.head_hash, "mono hash");
    if (data.keyed_from !== null)
      fact(facts, "Keyed", `from #${data.keyed_from}, keyring key(s) ${data.key_ids.join(", ")}`);
    if (data.legacy) fact(facts, "Legacy", `${data.legacy} record(s) from before the chain was keyed`);
    const latest = data.latest_checkpoint;
    fact(
      facts,
      "Last checkpoint",
      latest ? `#${latest.head_seq} (${latest.count} records) at ${latest.at}` : "none signed yet",
    );
    if (data.problem) {
      const where = data.problem.seq === null ? "the chain" : `#${data.problem.seq} (record id ${data.problem.record_id})`;
      fact(facts, "Broken at", where, "bad");
      fact(facts, "What", data.problem.what);
      fact(facts, "What to do", data.problem.action);
    }
    box.append(facts);
  };
})();
