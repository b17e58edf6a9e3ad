-- Bad input (DESIGN invariant 8): refused with sqlstate 22023 and a message that names the field
-- and says what to do, never echoing the value, and without a partial change.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(37);

select public.organizations__create('Test Org Input') ->> 'id' as org \gset
select public.deployments__create(:'org', 'A1', 'test-input-a1') ->> 'id' as dep \gset
select public.secrets__create(:'org', 'k', 'anthropic', 'canary-input-value-0001', repeat('ab', 32)) ->> 'secret_id' as sid \gset

create temp table counts_before as
select (select count(*) from public.secrets) as secrets, (select count(*) from public.secret_versions) as versions,
       (select count(*) from vault.secrets) as vault, (select count(*) from public.secret_access_log) as log,
       (select count(*) from public.deployment_secrets) as bindings;

-- ---- env var names ----------------------------------------------------------------------------------
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep', v, :'sid'), '22023',
  'env_var: must match ^[A-Z_][A-Z0-9_]*$', 'env var ' || replace(quote_literal(v), E'\n', '\n') || ' is refused')
from unnest(array['lower_case', '1LEADING_DIGIT', 'HAS-DASH', 'HAS SPACE', 'DOT.TED', '', E'NEW\nLINE', 'ÄPFEL', 'A=B']) v;
select throws_ok(format('select public.deployment_secrets__bind(%L, null, %L)', :'dep', :'sid'), '22023',
  'env_var: must match ^[A-Z_][A-Z0-9_]*$', 'a null env var is refused');
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep', repeat('A', 129), :'sid'), '22023',
  'env_var: must be at most 128 characters', 'an env var over 128 characters is refused');
select throws_ok(format('select public.deployment_secrets__unbind(%L, %L)', :'dep', 'lower'), '22023',
  'env_var: must match ^[A-Z_][A-Z0-9_]*$', 'unbind checks the env var too');
select lives_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep', '_UNDER_SCORE_9', :'sid'),
  'a name like _UNDER_SCORE_9 is accepted');
delete from public.deployment_secrets where deployment_id = :'dep';

-- ---- values ---------------------------------------------------------------------------------------
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'v', 'other', ''), '22023',
  'value: must not be empty', 'an empty value is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, null, repeat(''ab'', 32))', :'org', 'v', 'other'), '22023',
  'value: must not be empty', 'a null value is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'v', 'other', 'canary-input-' || repeat('x', 4084)),
  '22023', 'value: must be at most 4096 characters', 'a value of 4097 characters is refused');
select lives_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'v4096', 'other', repeat('y', 4096)),
  'a value of exactly 4096 characters is accepted');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'v', 'other', 'canary-input' || c || 'tail'),
  '22023', 'value: must not contain control characters (U+0000-U+001F, U+007F)',
  'a value containing ' || to_hex(ascii(c)) || 'h is refused')
from unnest(array[chr(1), chr(9), chr(10), chr(13), chr(27), chr(31), chr(127)]) c;
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'v', 'other', '   '), '22023',
  'value: must not be blank', 'a blank value is refused');
select throws_ok(format('select public.secrets__add_version(%L, %L, repeat(''ab'', 32))', :'sid', 'canary-input' || chr(10)), '22023',
  'value: must not contain control characters (U+0000-U+001F, U+007F)', 'add_version checks the value too');
select throws_ok(format('select public.secrets__add_version(%L, %L, repeat(''ab'', 32))', :'sid', ''), '22023',
  'value: must not be empty', 'add_version refuses an empty value');

-- ---- names and the rest -----------------------------------------------------------------------------
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', '', 'other', 'x'), '22023',
  'name: must not be empty', 'an empty secret name is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', repeat('n', 201), 'other', 'x'), '22023',
  'name: must be at most 200 characters', 'a secret name over 200 characters is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org', 'n', 'Open AI', 'x'), '22023',
  'provider: must be a lowercase provider name such as anthropic, openai or other', 'a malformed provider is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32), null, %L)', :'org', 'n', 'other', 'x', repeat('a', 201)),
  '22023', 'actor: must be at most 200 characters', 'an over-long actor is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32), null, null, %L)', :'org', 'n', 'other', 'x', E'job\n1'),
  '22023', 'job_id: must not contain control characters (U+0000-U+001F, U+007F)', 'a job id with a newline is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32), null, null, null, null, %L)', :'org', 'n', 'other', 'x',
  repeat('u', 1001)), '22023', 'user_agent: must be at most 1000 characters', 'an over-long user agent is refused');
select throws_ok(format('select public.secret_versions__retire(%L, 0)', :'sid'), '22023',
  'version: must be a positive integer', 'version 0 is refused');
select throws_ok($$select public.secrets__create(null, 'n', 'other', 'x', repeat('ab', 32))$$, '22023', 'org_id: is required',
  'a null org id is refused');

-- ---- nothing changed -------------------------------------------------------------------------------
select is(
  (select row((select count(*) from public.secrets) - 1, (select count(*) from public.secret_versions) - 1,
              (select count(*) from vault.secrets) - 1, (select count(*) from public.secret_access_log) - 2,
              (select count(*) from public.deployment_secrets))::text),
  (select row(secrets, versions, vault, log, bindings)::text from counts_before),
  'the refused calls changed nothing (only the accepted bind and 4096-character value were written)');
select is((select count(*) from public.secret_versions where secret_id = :'sid'), 1::bigint,
  'the refused add_version left no version behind');

select * from finish();
rollback;
