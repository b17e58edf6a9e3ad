-- Signed audit checkpoints: what the orchestrator reads to sign every chain's head, and to check a
-- signed head later. Signing and storing happen outside the database (orchestrator/audit/), with a
-- key the database never sees, so the database owner (who can disable the append-only trigger and
-- recompute every hash) cannot trim, rewrite or drop a chain without the next verify seeing it.
--
-- Chains are those of 20261125211600_secret_access_log.sql: one per organization (chain id = org
-- id), the org-less chain of the nil uuid, and the platform chain ffffffff-…
-- (20261125221400_platform_secrets.sql). A chain's head row in secret_access_log_chains holds its
-- last sequence number and hash; retention moves its anchor (the last row it deleted) forward.
--
-- Both functions only read. They are security definer so that the orchestrator's role needs no
-- table privilege; EXECUTE is cortex_orchestrator's alone.

-- Every chain's head: {at, chains: [{chain, seq, hash, at}]}, in chain id order. `at` (top level)
-- is the database's clock when read; a chain's `at` is the time of its head row. A chain that has
-- rows but lost its head row is listed with null seq and hash, so that a caller walking every
-- chain verifies it too (secret_access_log__verify names it as removed).
create function public.secret_access_log__heads()
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  with chains as (
    select c.chain_id from public.secret_access_log_chains c
    union
    select distinct l.chain_id from public.secret_access_log l
  )
  select pg_catalog.jsonb_build_object(
    'at', pg_catalog.to_char(pg_catalog.clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'chains', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'chain', x.chain_id,
      'seq', h.head_seq,
      'hash', h.head_hash,
      'at', pg_catalog.to_char(coalesce(r.at, h.updated_at) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ) order by x.chain_id), '[]'::jsonb))
  from chains x
  left join public.secret_access_log_chains h on h.chain_id = x.chain_id
  left join public.secret_access_log r on r.id = h.head_id and r.chain_id = h.chain_id
$$;

-- For each (chain, seq) asked for, what is stored now: [{chain, seq, exists, head_seq, max_seq,
-- anchor_seq, hash}], in the order asked. `exists`: the chain has a head row or any row; `hash`:
-- the hash of the row at that seq, or the anchor's hash when retention deleted exactly that row,
-- else null. The caller compares with what it signed; this function judges nothing.
create function public.secret_access_log__hashes_at(p_chain_ids uuid[], p_seqs bigint[])
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_result jsonb;
begin
  if p_chain_ids is null or p_seqs is null then
    raise exception using errcode = '22023', message = 'chain_ids: chain_ids and seqs are required';
  end if;
  if pg_catalog.cardinality(p_chain_ids) <> pg_catalog.cardinality(p_seqs) then
    raise exception using errcode = '22023', message = 'seqs: must have one sequence number per chain id';
  end if;
  if pg_catalog.cardinality(p_chain_ids) > 100000 then
    raise exception using errcode = '22023', message = 'chain_ids: at most 100000 per call';
  end if;
  if pg_catalog.array_position(p_chain_ids, null) is not null or pg_catalog.array_position(p_seqs, null) is not null then
    raise exception using errcode = '22023', message = 'chain_ids: must not contain null (nor seqs)';
  end if;

  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'chain', q.chain_id,
      'seq', q.seq,
      'exists', h.chain_id is not null or m.max_seq is not null,
      'head_seq', h.head_seq,
      'max_seq', m.max_seq,
      'anchor_seq', h.anchor_seq,
      'hash', coalesce(r.hash, case when r.id is null and h.anchor_seq = q.seq then h.anchor_hash end)
    ) order by q.ord), '[]'::jsonb)
  into v_result
  from rows from (pg_catalog.unnest(p_chain_ids), pg_catalog.unnest(p_seqs)) with ordinality as q(chain_id, seq, ord)
  left join public.secret_access_log_chains h on h.chain_id = q.chain_id
  left join lateral (
    select pg_catalog.max(l.seq) as max_seq from public.secret_access_log l where l.chain_id = q.chain_id
  ) m on true
  left join public.secret_access_log r on r.chain_id = q.chain_id and r.seq = q.seq;
  return v_result;
end
$$;

revoke all on function public.secret_access_log__heads() from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__hashes_at(uuid[], bigint[])
  from public, anon, authenticated, service_role;
grant execute on function public.secret_access_log__heads() to cortex_orchestrator;
grant execute on function public.secret_access_log__hashes_at(uuid[], bigint[]) to cortex_orchestrator;
