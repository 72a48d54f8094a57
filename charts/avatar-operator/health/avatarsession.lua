-- Argo CD health check for avatar-operator.dev/AvatarSession (README "What GitOps tools read").
-- Pending, Starting: Progressing. Running: Healthy while Ready=True (Progressing while the
-- avatar is back on its way). Succeeded: Healthy, as Argo CD reads a completed Pod. Failed: Degraded.
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
if status == nil or status.phase == nil then
  return hs
end
if status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not acted on the latest spec yet"
  return hs
end
local word = condition(status, "Reconciling")
if word ~= nil then
  hs.message = word.reason .. ": " .. word.message
end
local ready = condition(status, "Ready")
if status.phase == "Failed" then
  hs.status = "Degraded"
elseif status.phase == "Succeeded" then
  hs.status = "Healthy"
elseif status.phase == "Running" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.reason .. ": " .. ready.message
elseif status.phase == "Running" and ready ~= nil then
  hs.message = ready.reason .. ": " .. ready.message
end
return hs
