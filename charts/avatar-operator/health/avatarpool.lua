-- Argo CD health check for avatar-operator.dev/AvatarPool (README "What GitOps tools read").
-- Ready=True (every runner the spec asks for answers): Healthy. Stalled=True (a runner failed
-- before it was ready, or the spec is invalid): Degraded. Otherwise: Progressing.
local function condition(status, kind)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end

local hs = { status = "Progressing", message = "waiting for the operator" }
local status = obj.status
if status == nil then
  return hs
end
if status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not acted on the latest spec yet"
  return hs
end
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
if ready == nil then
  return hs
end
hs.message = ready.reason .. ": " .. ready.message
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
elseif ready.status == "True" then
  hs.status = "Healthy"
end
return hs
