// Runs each benchmark definition through aws-local-stepfunctions (in-process ASL interpreter)
// and prints one JSON line per case: transitions per execution, executions, seconds, transitions/s.
// Usage: node run-aws-local-stepfunctions.mjs SECONDS_PER_CASE DEFINITION.json...
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { StateMachine } from 'aws-local-stepfunctions';

// The library leaves a rejected promise behind once a failing Task's error is caught; it
// does not affect the result.
process.on('unhandledRejection', () => {});

const seconds = Number(process.argv[2] ?? '3');
const files = process.argv.slice(3);

class Transient extends Error {
  constructor() {
    super('try again');
    this.name = 'Transient';
  }
}

// aws-local-stepfunctions has no per-state context object: `$$.State` comes from this fixed
// object (in its favour: nothing is built per state).
const options = {
  context: {
    Execution: { Id: 'bench', Name: 'bench', StartTime: new Date().toISOString() },
    State: { Name: 'S', EnteredTime: new Date().toISOString() },
  },
  overrides: {
    // The function of retry_catch always fails; retry pauses cost nothing, as in the Rust bench.
    taskResourceLocalHandlers: { T: async () => { throw new Transient(); } },
    retryIntervalOverrides: { T: 0 },
  },
};

async function runOnce(sm, input) {
  const execution = sm.run(input, options);
  let transitions = 0;
  const counting = (async () => {
    for await (const event of execution.eventLogs) {
      if (event.type === 'StateEntered') transitions += 1;
    }
  })();
  const output = await execution.result;
  await counting;
  return { output, transitions };
}

for (const file of files) {
  const name = basename(file, '.json');
  const { definition, input } = JSON.parse(readFileSync(file, 'utf8'));
  const sm = new StateMachine(definition, { validationOptions: { checkArn: false } });
  // Count transitions once with the event log, then time runs without consuming it.
  const { transitions } = await runOnce(sm, input);
  for (let i = 0; i < 3; i++) await sm.run(input, options).result; // warm-up
  let runs = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < deadline) {
    await sm.run(input, options).result;
    runs += 1;
    now = process.hrtime.bigint();
  }
  const elapsed = Number(now - start) / 1e9;
  console.log(JSON.stringify({
    engine: 'aws-local-stepfunctions', case: name, transitions, runs, seconds: elapsed,
    transitions_per_second: (transitions * runs) / elapsed,
  }));
}
