// A small visual editor for flat rule groups ("all/any of these conditions"). It reads and writes the JSON
// textarea (#id_rules), which stays the source of truth; nested trees are edited as JSON directly.
(function () {
  const root = document.getElementById("rule-builder");
  const textarea = document.getElementById("id_rules");
  if (!root || !textarea) return;
  const types = JSON.parse(root.dataset.fieldTypes);
  const operators = JSON.parse(root.dataset.operators);
  const noValue = ["exists", "not_exists"];
  let state = parse(textarea.value);

  function parse(text) {
    if (!text.trim() || text.trim() === "null") return { group: "and", conditions: [] };
    let tree;
    try { tree = JSON.parse(text); } catch (e) { return null; }
    if (tree && tree.field) return { group: "and", conditions: [tree] };
    const group = tree && (tree.and ? "and" : tree.or ? "or" : null);
    if (!group || !Array.isArray(tree[group]) || !tree[group].every((c) => c && c.field)) return null;
    return { group, conditions: tree[group] };
  }

  function typed(type, op, raw) {
    if (op === "in" || op === "not_in" || op === "between") {
      return raw.split(",").map((x) => x.trim()).filter(Boolean).map((x) => typed(type, "eq", x));
    }
    if (op === "within_last_days") return parseInt(raw, 10);
    if (type === "number") return raw === "" ? raw : Number(raw);
    if (type === "boolean") return raw === "true";
    return raw;
  }

  function write() {
    const conditions = state.conditions.map((c) => {
      const out = { field: c.field, op: c.op };
      if (!noValue.includes(c.op)) out.value = c.value;
      return out;
    });
    let tree = null;
    if (conditions.length === 1) tree = conditions[0];
    else if (conditions.length > 1) tree = { [state.group]: conditions };
    textarea.value = tree ? JSON.stringify(tree, null, 2) : "";
    document.body.dispatchEvent(new Event("rules-changed"));
  }

  function option(value, label, selected) {
    const el = document.createElement("option");
    el.value = value; el.textContent = label; el.selected = selected;
    return el;
  }

  function render() {
    root.innerHTML = "";
    if (state === null) {
      root.innerHTML = '<p class="muted small">These rules nest groups; edit them as JSON below.</p>';
      return;
    }
    const head = document.createElement("div");
    head.className = "rule-row";
    const group = document.createElement("select");
    group.setAttribute("aria-label", "Match");
    group.append(option("and", "Match all of", state.group === "and"), option("or", "Match any of", state.group === "or"));
    group.onchange = () => { state.group = group.value; write(); };
    head.append(group);
    root.append(head);
    state.conditions.forEach((condition, index) => {
      const row = document.createElement("div");
      row.className = "rule-row";
      row.dataset.testid = "rule-row";
      const field = document.createElement("select");
      field.setAttribute("aria-label", "Field");
      Object.keys(types).forEach((name) => field.append(option(name, name, name === condition.field)));
      const type = types[condition.field] || "string";
      const op = document.createElement("select");
      op.setAttribute("aria-label", "Operator");
      (operators[type] || []).forEach((name) => op.append(option(name, name.replace(/_/g, " "), name === condition.op)));
      const value = document.createElement("input");
      value.className = "input";
      value.setAttribute("aria-label", "Value");
      value.value = Array.isArray(condition.value) ? condition.value.join(", ") : (condition.value ?? "");
      value.hidden = noValue.includes(condition.op);
      const remove = document.createElement("button");
      remove.type = "button"; remove.className = "btn btn-small"; remove.textContent = "Remove";
      field.onchange = () => {
        condition.field = field.value;
        const ops = operators[types[field.value]] || [];
        if (!ops.includes(condition.op)) condition.op = ops[0];
        write(); render();
      };
      op.onchange = () => { condition.op = op.value; condition.value = typed(type, op.value, value.value); write(); render(); };
      value.oninput = () => { condition.value = typed(type, condition.op, value.value); write(); };
      remove.onclick = () => { state.conditions.splice(index, 1); write(); render(); };
      row.append(field, op, value, remove);
      root.append(row);
    });
    const add = document.createElement("button");
    add.type = "button"; add.className = "btn btn-small"; add.textContent = "+ Add condition";
    add.dataset.testid = "add-condition";
    add.onclick = () => {
      const first = Object.keys(types)[0];
      state.conditions.push({ field: first, op: operators[types[first]][0], value: "" });
      write(); render();
    };
    root.append(add);
  }

  textarea.addEventListener("input", () => { state = parse(textarea.value); render(); });
  render();
})();
